"""Cut an MPEG-2/H.264/HEVC stream at its key frames into segments that decode on their own.

The packets are read in decode order without decoding (:meth:`AVDecoder.demux`); a packet
flagged as a key frame (``packet.is_keyframe``: an IDR, CRA or MPEG-2 I picture) starts a
new segment. A segment's frames are counted from its key frame exactly as a decode from the
start of the stream counts them, so every frame keeps its index and time.

Index of a key frame
    The packets before it in decode order, plus the leading pictures that follow it in
    decode order but are shown before it (timestamps below its own; open GOPs, as x265
    writes them). Those leading pictures need the previous segment's last reference
    frame: they are decoded by the previous segment, which also gets the key frame and
    its leading pictures (and only those) after its own packets.

Where the stream is not split
    A key frame is a split point only if its timestamp gives that same index and agrees
    with the DICOM timing within half a frame (:meth:`AVDecoder.agrees`). At the first key
    frame where that fails (no timestamps, frames missing from the stream, a timing that
    drifts), or when one segment would hold more than :data:`MAX_SEGMENT_BYTES`, the rest
    of the range is a :class:`SerialTail`: decoded serially, exactly as
    :meth:`AVDecoder.iter_frames` decodes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import av.error

if TYPE_CHECKING:
    from dicom_io.avdecode import AVDecoder

#: Packets (frames) a segment holds at least: every split costs a fresh decoder and decodes
#: the next key frame twice, which only pays for itself over several frames.
MIN_SEGMENT_FRAMES = 16

#: Compressed bytes one segment may hold; past this the rest is a :class:`SerialTail`
#: (a stream with so few key frames gains little from segments, and memory stays bounded).
MAX_SEGMENT_BYTES = 64 << 20


@dataclass(frozen=True)
class Segment:
    """Packets that decode on their own, in a fresh decoder, from one key frame to the next.

    Attributes
    ----------
    first : int
        Index of the segment's first frame: its key frame (0 at the start of the stream).
    key_pts : int or None
        Timestamp of that key frame; frames shown before it (leading pictures of an open
        GOP) belong to the previous segment. ``None`` at the start of the stream.
    packets : tuple of av.Packet
        In decode order: from the key frame up to the next split key frame, then that key
        frame and its leading pictures (they complete this segment's last frames).
    next_first : int or None
        Index of the next segment's key frame, where this segment's frames stop; ``None``
        for the last segment, decoded to the end of its packets.
    next_key_pts : int or None
        Timestamp of the next segment's key frame, checked against the frame counted at
        ``next_first``.
    end_error : BaseException or None
        The demuxer's error right after the last packet (the stream breaks off there): the
        decoder is not flushed and the error is raised where a serial decode raises it.
    """

    first: int
    key_pts: int | None
    packets: tuple[av.Packet, ...]
    next_first: int | None = None
    next_key_pts: int | None = None
    end_error: BaseException | None = None


@dataclass(frozen=True)
class SerialTail:
    """The rest of the range, from frame ``first`` on, to be decoded serially.

    Attributes
    ----------
    first : int
        Index of a key frame whose index is certain (0 at the start of the stream).
    """

    first: int


def plan_segments(decoder: AVDecoder, start: int = 0, stop: int | None = None, *,
                  min_frames: int = MIN_SEGMENT_FRAMES, max_bytes: int = MAX_SEGMENT_BYTES
                  ) -> Iterator[Segment | SerialTail]:
    """Cut the stream into the segments holding frames ``start`` to ``stop - 1``, in order.

    Demuxes lazily: a segment is yielded once its next key frame's leading pictures are
    read, so the planner holds one segment's packets at a time. Segments wholly before
    ``start`` are read past, not yielded. The last item is a :class:`Segment` with
    ``next_first=None`` or a :class:`SerialTail`.

    Parameters
    ----------
    decoder : AVDecoder
        The opened stream (with its expected frame times set).
    start, stop : int
        The frames wanted (0-based, ``stop`` excluded; ``None`` means to the end).
    min_frames : int
        Packets a segment holds at least: a key frame closer to the last split is not one.
    max_bytes : int
        Compressed bytes one segment may hold before the rest becomes a serial tail.
    """
    end = float("inf") if stop is None else stop
    current: list[av.Packet] = []  # the open segment's packets, from its key frame
    first, first_pts, size = 0, None, 0
    key: av.Packet | None = None  # a key frame whose leading pictures are being read
    before_key, leading = 0, []  # packets before it (decode order); its leading pictures
    count = 0  # packets read
    errors: list[BaseException] = []
    packets = decoder.demux()
    try:
        for packet in _then_none(packets, errors):
            if key is not None and packet is not None and packet.pts is not None \
                    and packet.pts < key.pts:
                leading.append(packet)
                count += 1
                continue
            if key is not None:  # the key frame's leading pictures are all read
                index, split = before_key + len(leading), [key, *leading]
                if not decoder.agrees(index, key.pts):
                    yield SerialTail(first)
                    return
                if index >= end:
                    yield Segment(first, first_pts, (*current, *split),
                                  end_error=errors[0] if packet is None and errors else None)
                    return
                if index > start:
                    yield Segment(first, first_pts, (*current, *split), index, key.pts)
                current, first, first_pts, key = split, index, key.pts, None
                size = sum(p.size for p in split)
            if packet is None:
                yield Segment(first, first_pts, tuple(current),
                              end_error=errors[0] if errors else None)
                return
            if packet.is_keyframe and len(current) >= min_frames:
                if packet.pts is None:
                    yield SerialTail(first)
                    return
                key, before_key, leading = packet, count, []
            else:
                current.append(packet)
                size += packet.size
                if size > max_bytes:
                    yield SerialTail(first)
                    return
            count += 1
    finally:
        packets.close()


def _then_none(packets: Iterator[av.Packet], errors: list[BaseException]
               ) -> Iterator[av.Packet | None]:
    """``packets``, then ``None`` for the end of the stream; a demuxer error ends it early
    and is appended to ``errors``."""
    try:
        yield from packets
    except (av.error.FFmpegError, OSError) as e:
        errors.append(e)
    yield None


def key_frames(decoder: AVDecoder) -> list[int]:
    """Indices (0-based) of the key frames the stream is split at, found by demuxing only.

    The first item is always 0 (the start of the stream, key frame or not); it is the only
    one when the stream cannot be split (see :func:`plan_segments`).
    """
    return [s.first for s in plan_segments(decoder)]
