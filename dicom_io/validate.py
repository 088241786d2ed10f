"""Run the external DICOM validators on written objects.

``dciodvfy`` (dicom3tools) checks an instance against its IOD (PS3.3) and reports lines
starting with ``Error -`` or ``Warning -``; DCMTK's ``dsrdump`` renders an SR content tree.
Both are command-line tools found on ``PATH`` (Debian packages ``dicom3tools``, ``dcmtk``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from typing import NamedTuple

from dicom_io.errors import DicomIOError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0


class ValidatorUnavailableError(DicomIOError):
    """The external validator is not installed or could not run."""


class ValidationResult(NamedTuple):
    """Outcome of :func:`run_dciodvfy`: ``ok`` is ``True`` when there is no error."""

    ok: bool
    errors: list[str]
    warnings: list[str]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ValidatorUnavailableError(f"{name} is not on PATH (install dicom3tools / dcmtk)")
    return path


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise ValidatorUnavailableError(f"{os.path.basename(argv[0])} timed out after "
                                        f"{timeout_s:.0f} s on {argv[-1]}") from e
    except OSError as e:
        raise ValidatorUnavailableError(f"could not run {argv[0]}: {e}") from e


def parse_dciodvfy(output: str) -> ValidationResult:
    """Split ``dciodvfy`` output into error and warning messages (prefix removed)."""
    errors: list[str] = []
    warnings: list[str] = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("Error - "):
            errors.append(line[len("Error - "):])
        elif line.startswith("Warning - "):
            warnings.append(line[len("Warning - "):])
    return ValidationResult(not errors, errors, warnings)


def run_dciodvfy(path: str | os.PathLike[str],
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> ValidationResult:
    """Validate one DICOM file with ``dciodvfy``.

    Parameters
    ----------
    path : path-like
        The DICOM file (Part 10).
    timeout_s : float
        Limit for the tool, in seconds.

    Returns
    -------
    ValidationResult
        ``(ok, errors, warnings)``; a file dciodvfy cannot read gives an error.

    Raises
    ------
    ValidatorUnavailableError
        When dciodvfy is missing or times out.
    """
    proc = _run([_tool("dciodvfy"), os.fspath(path)], timeout_s)
    result = parse_dciodvfy(proc.stdout + "\n" + proc.stderr)
    if proc.returncode not in (0, 1) and not result.errors:  # crashed without saying why
        result.errors.append(f"dciodvfy exited with status {proc.returncode}")
        result = ValidationResult(False, result.errors, result.warnings)
    logger.debug("dciodvfy %s: %d errors, %d warnings", os.fspath(path),
                 len(result.errors), len(result.warnings))
    return result


def unexpected_warnings(warnings: Iterable[str], known: Iterable[str]) -> list[str]:
    """The warnings not matched by any of the ``known`` regular expressions."""
    patterns = [re.compile(k) for k in known]
    return [w for w in warnings if not any(p.search(w) for p in patterns)]


def run_dsrdump(path: str | os.PathLike[str], timeout_s: float = DEFAULT_TIMEOUT_S,
                extra_args: Iterable[str] = ()) -> str:
    """Render an SR document tree with DCMTK's ``dsrdump``.

    Returns
    -------
    str
        The rendered text (stdout).

    Raises
    ------
    ValidatorUnavailableError
        When dsrdump is missing, times out or cannot parse the document.
    """
    proc = _run([_tool("dsrdump"), *extra_args, os.fspath(path)], timeout_s)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValidatorUnavailableError(f"dsrdump failed on {os.fspath(path)}: {detail}")
    return proc.stdout
