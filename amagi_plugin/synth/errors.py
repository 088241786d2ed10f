"""Exceptions of the synthetic-data generator."""

from __future__ import annotations

from amagi_plugin.errors import AmagiError, ExitCode


class SynthError(AmagiError):
    """The generator cannot run with the parameters given (bad size, range, format, ...)."""

    exit_code = ExitCode.USAGE


class OutputExistsError(AmagiError):
    """A case folder to be written already exists and overwriting was not asked for."""

    exit_code = ExitCode.BAD_INPUT
