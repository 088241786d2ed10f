"""Durable placement of received files in the spool directory.

Layout: ``<spool>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. A file is
first copied (or renamed, on the same filesystem) to a hidden ``.partial`` name next to its
final place, fsynced, renamed into place and the directory fsynced, so a crash leaves either
the complete file or no file under the final name (DESIGN.md §5).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and new entries in it are durable (POSIX)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(root: Path, parts: tuple[str, ...]) -> Path:
    """Create ``root/parts...``, fsyncing each parent whose entry list changed."""
    current = root
    for part in parts:
        child = current / part
        if not child.is_dir():
            with contextlib.suppress(FileExistsError):
                child.mkdir()
            fsync_directory(current)
        current = child
    return current


class SpaceGuard:
    """Free-space accounting for one spool directory, shared by concurrent associations.

    Bytes being copied in but not yet on disk are counted as reserved, so parallel stores
    cannot all pass the check and then together fill the disk.

    Parameters
    ----------
    spool_dir : Path
        The spool root (its filesystem is the one checked).
    reserve_bytes : int
        Free space (bytes) that must remain after every store.
    """

    def __init__(self, spool_dir: Path, reserve_bytes: int) -> None:
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes}")
        self.spool_dir = spool_dir
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()
        self._in_flight = 0

    def try_reserve(self, nbytes: int) -> tuple[bool, str]:
        """Reserve ``nbytes`` if free space minus in-flight bytes stays >= the reserve."""
        with self._lock:
            free = shutil.disk_usage(self.spool_dir).free
            left = free - self._in_flight - nbytes
            if left < self.reserve_bytes:
                return False, (f"free space on the spool filesystem would be {left} bytes after "
                               f"storing {nbytes} bytes; the reserve is {self.reserve_bytes} bytes")
            self._in_flight += nbytes
            return True, ""

    def has_room(self) -> tuple[bool, str]:
        """Whether free space minus in-flight bytes is still at least the reserve."""
        with self._lock:
            free = shutil.disk_usage(self.spool_dir).free
            left = free - self._in_flight
        if left < self.reserve_bytes:
            return False, (f"{left} bytes free on the spool filesystem, the reserve is "
                           f"{self.reserve_bytes} bytes")
        return True, ""

    def release(self, nbytes: int) -> None:
        """Give back bytes reserved by :meth:`try_reserve`."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - nbytes)


@dataclass
class PlacedFile:
    """A file renamed into its final spool place, not yet committed.

    :meth:`commit` makes the placement final; :meth:`rollback` restores the state before it
    (removes the new file, or puts back the file it replaced).
    """

    path: Path
    backup: Path | None

    def commit(self) -> None:
        """Drop the backup of a replaced file (if any)."""
        if self.backup is not None:
            self.backup.unlink(missing_ok=True)
            self.backup = None

    def rollback(self) -> None:
        """Remove the new file (restoring a replaced one) and fsync the directory."""
        if self.backup is not None:
            os.replace(self.backup, self.path)
            self.backup = None
        else:
            self.path.unlink(missing_ok=True)
        fsync_directory(self.path.parent)


def needs_copy(src: Path, spool_dir: Path) -> bool:
    """``True`` when ``src`` is on another filesystem than ``spool_dir`` (a copy is needed)."""
    return os.stat(src).st_dev != os.stat(spool_dir).st_dev


def place(src: Path, spool_dir: Path, parts: tuple[str, ...], name: str) -> PlacedFile:
    """Move ``src`` durably to ``spool_dir/parts.../name``.

    Parameters
    ----------
    src : Path
        The received file (pynetdicom's temporary file); renamed if on the same filesystem,
        otherwise copied (streamed, not loaded) and left for its owner to delete.
    spool_dir : Path
        The spool root.
    parts : tuple of str
        Sub-directories (already validated as safe names: UIDs).
    name : str
        Final file name.

    Returns
    -------
    PlacedFile
        The placed file; call ``commit()`` or ``rollback()``.

    Raises
    ------
    OSError
        On any I/O failure; nothing is left under the final name or as a partial file.
    """
    directory = _make_dirs(spool_dir, parts)
    final = directory / name
    token = uuid.uuid4().hex
    partial = directory / f".{name}.{token}.partial"
    backup: Path | None = None
    try:
        try:
            os.rename(src, partial)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copyfile(src, partial)
        _fsync_file(partial)
        if final.exists():
            backup = directory / f".{name}.{token}.bak"
            os.link(final, backup)
        os.replace(partial, final)
        fsync_directory(directory)
    except BaseException:
        partial.unlink(missing_ok=True)
        if backup is not None:
            backup.unlink(missing_ok=True)
        raise
    return PlacedFile(final, backup)


def remove_partial_uploads(spool_dir: Path, incoming_dir: Path | None = None
                           ) -> tuple[int, int]:
    """Remove what interrupted transfers left: every file in ``incoming_dir`` (data sets
    pynetdicom was receiving) and the hidden ``.partial`` files of :func:`place` under
    ``spool_dir``. Call it when nothing is being received (at start-up).

    Returns
    -------
    (files, bytes) : tuple of int
        How much was removed.
    """
    candidates: list[Path] = []
    if incoming_dir is not None and incoming_dir.is_dir():
        candidates += [p for p in incoming_dir.iterdir() if p.is_file()]
    if spool_dir.is_dir():
        candidates += [p for p in spool_dir.rglob(".*.partial") if p.is_file()]
    files = size = 0
    for path in candidates:
        try:
            n = path.stat().st_size
            path.unlink()
        except OSError as e:
            logger.warning("cannot remove partial upload %s: %s", path.name, e.strerror or e)
            continue
        files, size = files + 1, size + n
    if files:
        logger.info("removed %d partial upload(s), %d bytes", files, size)
    return files, size
