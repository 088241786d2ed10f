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

Starting near a frame
    With ``seek``, the planner does not demux from the start of the stream up to the first
    frame wanted: it seeks the demuxer to before it and begins at the first key frame it
    reads there, if that key frame is at or before the frame and its timestamp gives its
    index (:meth:`AVDecoder.agrees`, as for any split); from there it counts as from the
    start. Landing after the frame, it seeks further back (:data:`SEEK_BACK_S`); failing
    that, it demuxes from the start. A few frames far into a long video then cost a seek
    and their segments, not a demux of everything before them.

Where the stream is not split
    A key frame is a split point only if its timestamp gives that same index and agrees
    with the DICOM timing within half a frame (:meth:`AVDecoder.agrees`). At the first key
    frame where that fails (no timestamps, frames missing from the stream, a timing that
    drifts), or when one segment would hold more than :data:`MAX_SEGMENT_BYTES`, the rest
    of the range is a :class:`SerialTail`: decoded serially, exactly as
    :meth:`AVDecoder.iter_frames` decodes it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import av.error

if TYPE_CHECKING:
    from dicom_io.avdecode import AVDecoder

logger = logging.getLogger(__name__)

#: Packets (frames) a segment holds at least: every split costs a fresh decoder and decodes
#: the next key frame twice, which only pays for itself over several frames.
MIN_SEGMENT_FRAMES = 16

#: How far before a frame's time (s) successive seeks of a planner that starts near it land.
SEEK_BACK_S = (0.0, 2.0, 8.0, 30.0)
#: Frames closer to the start than this (s) are planned from the start, without a seek.
MIN_SEEK_S = 1.0

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
                  min_frames: int = MIN_SEGMENT_FRAMES, max_bytes: int = MAX_SEGMENT_BYTES,
                  seek: bool = False) -> Iterator[Segment | SerialTail]:
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
    seek : bool
        Start from a seek near ``start`` rather than from the start of the stream (module
        docstring); the segments are cut at the key frames from there on.
    """
    end = float("inf") if stop is None else stop
    current: list[av.Packet] = []  # the open segment's packets, from its key frame
    first, first_pts, size = 0, None, 0
    key: av.Packet | None = None  # a key frame whose leading pictures are being read
    before_key, leading = 0, []  # packets before it (decode order); its leading pictures
    count = 0  # packets read
    errors: list[BaseException] = []
    landed = _seek_near(decoder, start) if seek else None
    if landed is None:
        packets, key_index = decoder.demux(), None
    else:  # the key frame at or before start: its index from its timestamp
        packets, key, key_index = landed
    try:
        for packet in _then_none(packets, errors):
            if key is not None and packet is not None and packet.pts is not None \
                    and packet.pts < key.pts:
                leading.append(packet)
                count += 1
                continue
            if key is not None:  # the key frame's leading pictures are all read
                index, split = before_key + len(leading), [key, *leading]
                if key_index is not None:  # reached by a seek: packets counted from here
                    index, key_index = key_index, None
                    count = index + 1
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


def _seek_near(decoder: AVDecoder, start: int
               ) -> tuple[Iterator[av.Packet], av.Packet, int] | None:
    """Packets demuxed from a seek, positioned after the last key frame at or before frame
    ``start`` that the seek reached; with that key frame and its index. ``None`` where
    the stream is planned from its start instead (module docstring)."""
    target = decoder.time_of(start)
    if not (math.isfinite(target) and target >= MIN_SEEK_S):
        return None
    for back in SEEK_BACK_S:
        packets = decoder.demux(max(0.0, target - back))
        try:
            for packet in packets:
                if packet.is_keyframe and packet.pts is not None:
                    break
            else:
                packets.close()
                continue
        except (av.error.FFmpegError, OSError, ValueError) as e:
            logger.debug("%s: seek towards frame %d failed (%s)", decoder.path, start, e)
            packets.close()
            return None
        index = decoder.index_at(packet.pts)
        if index is not None and index <= start and decoder.agrees(index, packet.pts):
            return packets, packet, index
        packets.close()
        if index is None or index <= start:  # a key frame that disagrees with the timing
            return None
    return None


def _then_none(packets: Iterator[av.Packet], errors: list[BaseException]
               ) -> Iterator[av.Packet | None]:
    """``packets``, then ``None`` for the end of the stream; a demuxer error ends it early
    and is appended to ``errors``."""
    try:
        yield from packets
    except (av.error.FFmpegError, OSError) as e:
        errors.append(e)
    yield None


def key_frames(decoder: AVDecoder, min_frames: int = MIN_SEGMENT_FRAMES) -> list[int]:
    """Indices (0-based) of the key frames the stream is split at, found by demuxing only
    (``min_frames`` as in :func:`plan_segments`; 1: every key frame).

    The first item is always 0 (the start of the stream, key frame or not); it is the only
    one when the stream cannot be split (see :func:`plan_segments`).
    """
    return [s.first for s in plan_segments(decoder, min_frames=min_frames)]
