"""Exceptions of the plugin layer, and the process exit codes they map to."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit status of every ``amagi`` command."""

    OK = 0
    FAILURE = 1  # the command ran and found a problem (``doctor`` with a failed check, ...)
    USAGE = 2  # bad flag, bad configuration value
    BAD_INPUT = 3  # the input file or data could not be used
    UNAVAILABLE = 69  # a DICOM peer, the database or a tool could not be reached (EX_UNAVAILABLE)
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


def exit_code_for(e: BaseException) -> ExitCode:
    """The exit status for an error that ended a command: the one table of the project.

    The plugin's own errors carry theirs; the lower packages' errors are mapped here by
    class (most specific first), so :mod:`dicom_io`, :mod:`models` and :mod:`db` never
    import this layer. Anything else is a bug (``INTERNAL``).
    """
    if isinstance(e, AmagiError):
        return e.exit_code
    for kind, code in _exit_table():
        if isinstance(e, kind):
            return code
    return ExitCode.INTERNAL


def _exit_table() -> tuple[tuple[type[BaseException] | tuple[type[BaseException], ...],
                                 ExitCode], ...]:
    from db.errors import (
        AmbiguousCaseError,
        DatabaseMissingError,
        DatabaseUnavailableError,
        DatabaseURLError,
        DbError,
        JobStateError,
        NotFoundError,
    )
    from dicom_io.errors import DicomIOError, NetworkError, WriterError
    from dicom_io.validate import ValidatorUnavailableError
    from models.errors import ModelError

    return (
        (DatabaseMissingError, ExitCode.FAILURE),  # nothing stored yet: an answer, not an outage
        (DatabaseURLError, ExitCode.USAGE),
        ((NetworkError, DatabaseUnavailableError, ValidatorUnavailableError),
         ExitCode.UNAVAILABLE),
        # an input the user gave: a file, a case or job to look up, a model name
        ((NotFoundError, AmbiguousCaseError, JobStateError), ExitCode.BAD_INPUT),
        (WriterError, ExitCode.FAILURE),  # results could not be written
        ((DicomIOError, ModelError), ExitCode.BAD_INPUT),
        (DbError, ExitCode.FAILURE),  # schema too old or new, a lost job lease
        ((FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError),
         ExitCode.BAD_INPUT),
    )
