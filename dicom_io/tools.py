"""DCMTK's programs on PATH, past pynetdicom's programs of the same names.

pynetdicom installs console scripts under DCMTK's names (:data:`PYNETDICOM_APPS`:
``storescu``, ``storescp``, ``echoscu``...) into its environment's ``bin``. With that
environment activated they come first on PATH, take other options and refuse DCMTK's
(``storescu -xn``: "unrecognized arguments"), so ``shutil.which("storescu")`` may name a
program that is not DCMTK's. :func:`dcmtk_program` walks PATH in order and passes over
pynetdicom's scripts (a ``#!`` script that runs ``pynetdicom``), read, never run;
:func:`shadowing` names what a shell would run instead of DCMTK's.
"""

from __future__ import annotations

import os

from dicom_io.errors import DicomIOError

__all__ = ["PYNETDICOM_APPS", "DcmtkNotFoundError", "dcmtk_program", "is_pynetdicom_script",
           "locate", "shadowing"]

#: the programs ``pynetdicom`` installs under the names of DCMTK's (its ``apps``)
PYNETDICOM_APPS = frozenset({"echoscp", "echoscu", "findscu", "getscu", "movescu", "qrscp",
                             "storescp", "storescu"})
#: bytes of a script read to tell whose it is (a console script is a few hundred)
_HEAD = 4096


class DcmtkNotFoundError(DicomIOError):
    """No program of that name on PATH but pynetdicom's."""


def _candidates(name: str, path: str | None) -> list[str]:
    """Every executable file called ``name`` on ``path`` (PATH by default), in order."""
    found: list[str] = []
    for d in os.get_exec_path({"PATH": path} if path is not None else None):
        p = os.path.join(d or os.curdir, name)
        if os.path.isfile(p) and os.access(p, os.X_OK) and p not in found:
            found.append(p)
    return found


def is_pynetdicom_script(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is one of pynetdicom's console scripts: a ``#!`` script that
    imports ``pynetdicom`` (DCMTK's programs are compiled executables)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        return False
    return head.startswith(b"#!") and b"pynetdicom" in head


def locate(name: str, path: str | None = None) -> tuple[list[str], str | None]:
    """pynetdicom's programs called ``name`` that come on ``path`` (PATH by default) before
    DCMTK's, and DCMTK's (``None`` when missing): one walk of PATH, each file read once."""
    found = _candidates(name, path)
    for i, p in enumerate(found):
        if not is_pynetdicom_script(p):
            return found[:i], p
    return found, None


def dcmtk_program(name: str, path: str | None = None) -> str:
    """The path of DCMTK's ``name``: the first executable of that name on ``path`` (PATH by
    default) that is not pynetdicom's. :class:`DcmtkNotFoundError` says what was found."""
    before, program = locate(name, path)
    if program is not None:
        return program
    others = f" (only pynetdicom's {', '.join(before)}, which takes other options)" if before else ""
    raise DcmtkNotFoundError(f"DCMTK's {name} is not on PATH{others}: install dcmtk "
                             "(Debian: apt-get install dcmtk)")


def shadowing(name: str, path: str | None = None) -> list[str]:
    """pynetdicom's programs called ``name`` that come on PATH before DCMTK's (all of them
    when DCMTK's is missing): what a shell runs instead of DCMTK's."""
    return locate(name, path)[0]
