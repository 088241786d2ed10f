"""Lazy, seekable view of an encapsulated Pixel Data element's fragments as one byte stream.

DICOM video (PS3.5 §8.2 and Annex A.4) stores the MPEG-2/H.264/HEVC bit stream in the
fragments of an encapsulated Pixel Data element: an undefined-length (7FE0,0010) OB
element holding a Basic Offset Table item, then one or more fragment items (FFFE,E000),
then a Sequence Delimitation Item (FFFE,E0DD). For video the fragments are *not* frames:
the bit stream is their concatenation (§8.2.7-8.2.12, fragmentable ``.1`` syntaxes).

:class:`FragmentStream` presents that concatenation as a read-only, seekable
:class:`io.RawIOBase` without loading it: only the item headers are read (8 bytes each)
to build a small index of ``(file offset, length)`` pairs, and reads go straight to the
file. PyAV can therefore demux and seek in it like in a plain MPEG-TS/MP4 file, and
peak memory does not depend on the size of the bit stream.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

import pydicom
from pydicom.dataset import FileDataset

from dicom_io.errors import EmptyVideoError, InvalidInstanceError, VideoDecodeError

logger = logging.getLogger(__name__)

_ITEM = (0xFFFE, 0xE000)
_SEQ_DELIM = (0xFFFE, 0xE0DD)
_PIXEL_DATA = (0x7FE0, 0x0010)
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class FragmentIndex:
    """Where the fragments of an encapsulated Pixel Data element lie in the file.

    Attributes
    ----------
    offsets : tuple of int
        File offset (bytes) of each fragment's first data byte, Basic Offset Table excluded.
    lengths : tuple of int
        Length (bytes) of each fragment's data, as far as the file holds it.
    damage : str or None
        ``None`` for a well-formed element; otherwise a one-line description of where the
        item structure ends early (truncated file, corrupt item tag or length). The
        fragments before the damage are listed and usable.
    """

    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    damage: str | None = None

    @property
    def total_length(self) -> int:
        """Length (bytes) of the concatenated bit stream."""
        return sum(self.lengths)


class DicomHeader(NamedTuple):
    """A DICOM file's header, read without its pixels: the one header type of ``dicom_io``.

    Attributes
    ----------
    dataset : pydicom.dataset.FileDataset
        Every element before (7FE0,0010) Pixel Data, with the File Meta Information.
    pixel_data_offset : int or None
        File offset (bytes) of the Pixel Data element's tag; ``None`` if there is none.
    """

    dataset: FileDataset
    pixel_data_offset: int | None


def read_header(path: str | os.PathLike[str], *, defer_size: int | None = None) -> DicomHeader:
    """Read a DICOM file's header and find its Pixel Data element, without reading pixels.

    Parameters
    ----------
    path : path-like
        The DICOM file.
    defer_size : int, optional
        Values larger than this many bytes stay on disk until read (pydicom's
        ``defer_size``); the Storage SCP reads received headers with 4 KiB.

    Raises
    ------
    InvalidInstanceError
        If the file cannot be read as DICOM (the pydicom error is its ``__cause__``).
    """
    with open(path, "rb") as fh:
        try:
            header = pydicom.dcmread(fh, stop_before_pixels=True, defer_size=defer_size)
        except Exception as e:  # pydicom raises several types for a non-DICOM file
            raise InvalidInstanceError(f"{os.fspath(path)}: not a readable DICOM file ({e})") from e
        pos = fh.tell()  # pydicom leaves the file at the Pixel Data tag
        head = fh.read(4)
    if len(head) < 4 or struct.unpack("<HH", head) != _PIXEL_DATA:
        return DicomHeader(header, None)
    return DicomHeader(header, pos)


#: Explicit VRs whose element header is 12 bytes with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = (b"OB", b"OW", b"UN", b"OV", b"OF", b"OD", b"OL")


def element_length(fh, element_offset: int) -> tuple[int, int] | None:
    """``(value length, offset of the value)`` of the data element whose tag is at
    ``element_offset`` in the open binary file ``fh`` (explicit VR with a 4-byte length, or
    implicit VR); the length is ``0xFFFFFFFF`` when undefined. ``None`` when the file ends
    inside the element's header."""
    fh.seek(element_offset)
    head = fh.read(12)
    if len(head) >= 12 and head[4:6] in _LONG_VRS:
        return struct.unpack("<I", head[8:12])[0], element_offset + 12
    if len(head) < 12 and (len(head) < 8 or head[4:6] in _LONG_VRS):
        return None
    return struct.unpack("<I", head[4:8])[0], element_offset + 8  # implicit VR


def index_fragments(path: str | os.PathLike[str], element_offset: int) -> FragmentIndex:
    """Walk the items of an encapsulated Pixel Data element (PS3.5 A.4) and index them.

    Parameters
    ----------
    path : path-like
        The DICOM file.
    element_offset : int
        File offset (bytes) of the Pixel Data element's tag (see :func:`read_header`).

    Returns
    -------
    FragmentIndex
        The fragments after the Basic Offset Table; ``damage`` says where the structure
        broke, if it did.

    Raises
    ------
    EmptyVideoError
        If the element holds no fragment data at all.
    VideoDecodeError
        If the element is not encapsulated, or the very first items are already corrupt.
    """
    size = os.path.getsize(path)
    offsets: list[int] = []
    lengths: list[int] = []
    damage: str | None = None
    with open(path, "rb") as fh:
        header = element_length(fh, element_offset)
        if header is None:
            raise VideoDecodeError(f"{os.fspath(path)}: file ends inside the Pixel Data header")
        length, pos = header
        if length != _UNDEFINED:
            raise VideoDecodeError(
                f"{os.fspath(path)}: Pixel Data is not encapsulated (defined length {length}); "
                "an MPEG/H.264/HEVC transfer syntax requires fragments (PS3.5 A.4)")
        first = True
        while True:
            fh.seek(pos)
            item = fh.read(8)
            if len(item) < 8:
                damage = f"file ends at byte {size} before the Sequence Delimitation Item"
                break
            group, elem, item_len = struct.unpack("<HHI", item)
            if (group, elem) == _SEQ_DELIM:
                break
            if (group, elem) != _ITEM or item_len == _UNDEFINED:
                damage = (f"corrupt fragment item at byte {pos}: expected (FFFE,E000) with a "
                          f"defined length, found ({group:04X},{elem:04X}) length {item_len:#x}")
                break
            data_at = pos + 8
            avail = max(0, min(item_len, size - data_at))
            if not first and avail:
                offsets.append(data_at)
                lengths.append(avail)
            first = False  # the first item is the Basic Offset Table
            if avail < item_len:
                damage = (f"file truncated: fragment at byte {pos} declares {item_len} bytes, "
                          f"only {avail} present")
                break
            pos = data_at + item_len
    if damage is not None:
        if not offsets:
            raise VideoDecodeError(f"{os.fspath(path)}: {damage}; no usable fragment before it")
        logger.warning("%s: %s; using the %d fragment(s) before it",
                       os.fspath(path), damage, len(offsets))
    if not offsets:
        raise EmptyVideoError(f"{os.fspath(path)}: Pixel Data holds no fragment data")
    return FragmentIndex(tuple(offsets), tuple(lengths), damage)


class FragmentStream(io.RawIOBase):
    """The concatenated fragments of one file as a read-only, seekable raw stream.

    Parameters
    ----------
    path : path-like
        The DICOM file; it is opened here and closed by :meth:`close`.
    index : FragmentIndex
        Where the fragments lie (see :func:`index_fragments`).

    Notes
    -----
    Memory use is the index (two integers per fragment) plus the caller's read buffer;
    nothing of the bit stream is kept.
    """

    def __init__(self, path: str | os.PathLike[str], index: FragmentIndex) -> None:
        super().__init__()
        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._offsets = index.offsets
        self._lengths = index.lengths
        starts = [0]
        for n in index.lengths:
            starts.append(starts[-1] + n)
        self._starts = starts  # virtual start of each fragment, plus the total at the end
        self._size = starts[-1]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"whence must be 0, 1 or 2, got {whence!r}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            k = bisect.bisect_right(self._starts, self._pos) - 1
            within = self._pos - self._starts[k]
            want = min(len(view) - done, self._lengths[k] - within)
            self._fh.seek(self._offsets[k] + within)
            got = self._fh.readinto(view[done:done + want])
            if not got:  # the file shrank since it was indexed
                break
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()

    def size(self) -> int:
        """Length (bytes) of the concatenated bit stream."""
        return self._size
