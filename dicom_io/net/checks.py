"""Checks on a received instance before it is accepted; each returns ``(ok, reason)``.

* :func:`check_uid`: UID syntax of PS3.5 §9.1 (checked before a UID becomes a file name).
* :func:`check_structure`: walks the element headers of a Part 10 file (PS3.5 §7.1, §7.5,
  §A.4) without reading values, so garbage and truncated data sets are found without
  loading pixel data into memory.

The header itself is read with :func:`dicom_io.fragments.read_header`.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_MAX_LEN = 64

# Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 §7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                       b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_MAX_DEPTH = 32


def check_uid(uid: object, name: str = "UID") -> tuple[bool, str]:
    """Check a UID against PS3.5 §9.1.

    Digits and dots only, no empty component, no leading zero in a component of more than
    one digit, at most 64 characters.

    Parameters
    ----------
    uid : object
        The value to check (anything; non-strings fail).
    name : str
        The attribute name used in the reason, e.g. ``"SOPInstanceUID"``.

    Returns
    -------
    tuple of (bool, str)
        ``(True, "")`` or ``(False, reason)``.
    """
    if not isinstance(uid, str) or not uid:
        return False, f"{name} is empty"
    if len(uid) > _UID_MAX_LEN:
        return False, f"{name} is {len(uid)} characters long (at most 64, PS3.5 §9.1)"
    if not _UID_RE.match(uid):
        return False, f"{name} {uid!r} is not a valid UID (PS3.5 §9.1)"
    return True, ""


class _Malformed(Exception):
    """Raised inside the walker; the message is the reason."""


def _read(fh: BinaryIO, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _Malformed(f"data set truncated in {what} at byte {fh.tell()}")
    return data


def _skip(fh: BinaryIO, length: int, end: int, tag: int) -> None:
    pos = fh.tell()
    if pos + length > end:
        raise _Malformed(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes "
                         f"but only {end - pos} remain (truncated)")
    fh.seek(length, os.SEEK_CUR)


def _walk_elements(fh: BinaryIO, end: int, implicit: bool, depth: int,
                   delimiter: int | None) -> None:
    """Walk data elements until ``end`` (top level) or the item ``delimiter``."""
    if depth > _MAX_DEPTH:
        raise _Malformed(f"sequences nested deeper than {_MAX_DEPTH} levels")
    previous = -1
    while True:
        if delimiter is None and fh.tell() == end:
            return
        head = _read(fh, 8, "an element header")
        group, elem = struct.unpack("<HH", head[:4])
        tag = (group << 16) | elem
        if group == 0xFFFE:
            if tag == delimiter:
                return
            raise _Malformed(f"unexpected delimiter ({group:04X},{elem:04X}) at byte "
                             f"{fh.tell() - 8}")
        if group < 0x0008 or tag <= previous:
            raise _Malformed(f"invalid or out-of-order tag ({group:04X},{elem:04X}) at byte "
                             f"{fh.tell() - 8} (PS3.5 §7.1: ascending tags)")
        previous = tag
        vr = b""
        if implicit:
            (length,) = struct.unpack("<I", head[4:])
        else:
            vr = head[4:6]
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                raise _Malformed(f"invalid VR {vr!r} for ({group:04X},{elem:04X}) at byte "
                                 f"{fh.tell() - 8}")
            if vr in _LONG_VRS:
                (length,) = struct.unpack("<I", _read(fh, 4, "an element length"))
            else:
                (length,) = struct.unpack("<H", head[6:])
        if length == _UNDEFINED:
            # A sequence, encapsulated Pixel Data (PS3.5 §A.4) or UN of undefined length
            # (whose content is Implicit VR, PS3.5 §6.2.2).
            _walk_items(fh, end, implicit or vr == b"UN", depth + 1, tag)
        else:
            _skip(fh, length, end, tag)


def _walk_items(fh: BinaryIO, end: int, implicit: bool, depth: int, owner: int) -> None:
    while True:
        head = _read(fh, 8, "an item header")
        group, elem, length = struct.unpack("<HHI", head)
        tag = (group << 16) | elem
        if tag == _SEQUENCE_DELIMITER:
            return
        if tag != _ITEM:
            raise _Malformed(f"expected an item in ({owner >> 16:04X},{owner & 0xFFFF:04X}), "
                             f"found ({group:04X},{elem:04X}) at byte {fh.tell() - 8}")
        if length == _UNDEFINED:
            _walk_elements(fh, end, implicit, depth + 1, _ITEM_DELIMITER)
        else:
            _skip(fh, length, end, tag)


def dataset_offset(path: str | os.PathLike[str]) -> int:
    """Byte offset of the data set in a Part 10 file (after preamble and File Meta group)."""
    with open(path, "rb") as fh:
        if _read(fh, 132, "the preamble")[128:] != b"DICM":
            raise _Malformed("no DICM prefix (not a PS3.10 file)")
        while True:
            head = fh.read(8)
            if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
                fh.seek(-len(head), os.SEEK_CUR)
                return fh.tell()
            if head[4:6] in _LONG_VRS:
                (length,) = struct.unpack("<I", _read(fh, 4, "the file meta"))
            else:
                (length,) = struct.unpack("<H", head[6:])
            fh.seek(length, os.SEEK_CUR)


def check_structure(path: str | os.PathLike[str], transfer_syntax: str) -> tuple[bool, str]:
    """Walk every element header of a received file; values are skipped, never read.

    Parameters
    ----------
    path : str or os.PathLike
        A PS3.10 file (preamble, ``DICM``, File Meta group) as written by pynetdicom.
    transfer_syntax : str
        The negotiated transfer syntax of the data set. Deflated data sets (small SR/KOS
        objects) are checked by inflating and parsing them completely instead.

    Returns
    -------
    tuple of (bool, str)
        ``(True, "")`` when the element structure ends exactly at the end of the file,
        otherwise ``(False, reason)`` naming the first problem (truncation, garbage, empty).
    """
    path = Path(path)
    try:
        end = path.stat().st_size
        offset = dataset_offset(path)
        if offset >= end:
            return False, "the data set is empty"
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            dcmread(path).walk(lambda _ds, _elem: None)
            return True, ""
        with path.open("rb") as fh:
            fh.seek(offset)
            _walk_elements(fh, end, transfer_syntax == ImplicitVRLittleEndian, 0, None)
    except _Malformed as e:
        return False, str(e)
    except Exception as e:  # pydicom parsing errors of a deflated data set
        return False, f"unreadable data set: {type(e).__name__}: {e}"
    return True, ""
