"""Exceptions raised by the ``models`` package.

Each message is a single line that names the offending argument, file or key, so the
plugin layer can show it to the user unchanged.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by :mod:`models`."""


class UnknownModelError(ModelError, KeyError):
    """``build_model`` was given a name that is not in the variant table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelConfigError(ModelError, ValueError):
    """An architecture argument is out of range (depth, input size, clip length, ...)."""


class InputShapeError(ModelError, ValueError):
    """A tensor handed to a model has the wrong rank, channel count, frames or size."""


class CheckpointError(ModelError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""
