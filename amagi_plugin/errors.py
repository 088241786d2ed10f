"""Exceptions of the plugin layer, and the process exit codes they map to."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit status of every ``amagi`` command."""

    OK = 0
    FAILURE = 1  # the command ran and found a problem (``doctor`` with a failed check, ...)
    USAGE = 2  # bad flag, bad configuration value
    BAD_INPUT = 3  # the input file or data could not be used
    INTERNAL = 70  # a bug: unexpected exception (EX_SOFTWARE)
    INTERRUPTED = 130


class AmagiError(Exception):
    """Base of the plugin's own errors: the message is shown to the user as one line."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(AmagiError):
    """An invalid configuration value; the message names the key and where it came from."""

    exit_code = ExitCode.USAGE


class InputError(AmagiError):
    """An input that cannot be processed (missing file, unreadable video, ...)."""

    exit_code = ExitCode.BAD_INPUT
