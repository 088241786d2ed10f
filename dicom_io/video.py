"""Open surgical video for analysis: DICOM video, multi-frame, single-frame series, plain files.

:func:`open_video` returns a :class:`VideoSource`: the instance's identity and header,
geometry, frame count, per-frame times, and :meth:`VideoSource.frames` yielding
``(index, time_s, rgb)`` one frame at a time. :func:`probe` reads only the header.

Supported inputs (DESIGN.md §4):

- Video Endoscopic / Microscopic / Photographic Image (PS3.3 A.32.5-7) with any MPEG-2
  (``.4.100``, ``.4.100.1``, ``.4.101``, ``.4.101.1``), H.264 (``.4.102``-``.4.106`` and
  their ``.1`` variants) or HEVC (``.4.107``, ``.4.108``) transfer syntax. All fragments
  are concatenated into one bit stream (PS3.5 §8.2.5-8.2.12), read lazily from the file
  and decoded by PyAV (:mod:`dicom_io.avdecode`).
- The same classes and Multi-frame True Color SC, native, RLE Lossless or JPEG Baseline,
  decoded one frame at a time by pydicom (:mod:`dicom_io.native`).
- A series of single-frame images (a directory or a list of files), ordered in time by
  :mod:`dicom_io.series`.
- A plain MP4/MPEG-TS file, for research use: identity fields and header are ``None``.

Timing policy: the DICOM timing (Frame Time or Frame Time Vector, see
:mod:`dicom_io.timing`) is authoritative. The stream's nominal rate is compared with it
when the video is opened, and each decode compares the stream's timestamps with it; a
disagreement (rates more than 0.1 % apart, a timestamp more than half a frame off) is
logged as a warning and the DICOM value is used. When the rates agree within 0.1 %, the
stream's exact rate replaces the rounded Frame Time ("33.3333" ms) so that times do not
drift over long videos. Without DICOM timing, the stream's rate is used (with a warning); without either,
``fallback_fps`` if given, else :class:`~dicom_io.errors.MissingTimingError`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_io.avdecode import AVDecoder
from dicom_io.encode import VIDEO_TRANSFER_SYNTAXES
from dicom_io.errors import (
    EmptyVideoError,
    InvalidInstanceError,
    MissingTimingError,
    UnsupportedTransferSyntaxError,
    VideoDecodeError,
)
from dicom_io.fragments import element_length, index_fragments, read_header
from dicom_io.native import PIXEL_TRANSFER_SYNTAXES, iter_multiframe, read_single
from dicom_io.parallel import parallel_frames
from dicom_io.series import list_series_files, order_series
from dicom_io.sopclasses import INPUT_SOP_CLASSES, VL_ENDOSCOPIC
from dicom_io.timing import FrameTiming, timing_from_dataset

logger = logging.getLogger(__name__)

#: Every transfer syntax :func:`open_video` decodes.
SUPPORTED_TRANSFER_SYNTAXES = frozenset(VIDEO_TRANSFER_SYNTAXES) | PIXEL_TRANSFER_SYNTAXES

#: Relative frame-rate difference (DICOM vs stream) below which both are the same rate,
#: up to the rounding of Frame Time's decimal string (DS, 16 characters).
_RATE_TOLERANCE = 1e-3

#: FFmpeg demuxers accepted for plain video files (research use).
_PLAIN_FORMATS = frozenset({"mpegts", "mov,mp4,m4a,3gp,3g2,mj2", "mpeg", "matroska,webm",
                            "avi", "h264", "hevc", "mpegvideo"})

#: Declared frame counts up to this are used as they are: what is allocated per frame
#: (times, the clip schedule) stays small, and a stream that ends early is a truncation
#: found while decoding. Above it, the stream is counted before anything is allocated.
_UNCHECKED_FRAMES = 1 << 16

#: ``reader(start, stop, step, wanted=...)``: ``(index, rgb)`` as :meth:`VideoSource.frames`.
_FrameReader = Callable[..., Iterator[tuple[int, np.ndarray]]]
PathArg = str | os.PathLike[str]


def check_supported(sop_class_uid: str | None, transfer_syntax_uid: str | None
                    ) -> tuple[bool, str]:
    """Whether an instance of this SOP class and transfer syntax can be analysed.

    Returns
    -------
    (ok, reason) : tuple of (bool, str)
        ``reason`` is a one-line explanation, empty when ``ok``.
    """
    if sop_class_uid not in INPUT_SOP_CLASSES:
        return False, f"SOP class {sop_class_uid} is not a video or endoscopic image class"
    if transfer_syntax_uid not in SUPPORTED_TRANSFER_SYNTAXES:
        return False, f"transfer syntax {transfer_syntax_uid} is not supported"
    return True, ""


@dataclass(frozen=True)
class VideoProbe:
    """Header-only facts about a DICOM instance (see :func:`probe`).

    Attributes
    ----------
    path : pathlib.Path
    sop_class_uid, transfer_syntax_uid : str or None
    study_instance_uid, series_instance_uid, sop_instance_uid : str or None
    number_of_frames : int
        Number of Frames (0028,0008); 1 when absent (single-frame image).
    rows, columns : int or None
        Image size (pixels).
    """

    path: Path
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    number_of_frames: int
    rows: int | None
    columns: int | None

    def check(self) -> tuple[bool, str]:
        """``(ok, reason)``: see :func:`check_supported`."""
        return check_supported(self.sop_class_uid, self.transfer_syntax_uid)


def _str_or_none(ds: Dataset, keyword: str) -> str | None:
    v = ds.get(keyword)
    return None if v in (None, "") else str(v)


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    v = ds.get(keyword)
    try:
        return None if v in (None, "") else int(v)
    except (TypeError, ValueError) as e:
        raise InvalidInstanceError(f"{keyword} {v!r} is not an integer") from e


def probe(path: PathArg) -> VideoProbe:
    """Read the identity, SOP class, transfer syntax and frame count of a DICOM file.

    Only the header is read (no pixel data, no decoding), so this is cheap for any size.

    Raises
    ------
    InvalidInstanceError
        If the file is not readable DICOM.
    """
    header, _ = read_header(path)
    meta = getattr(header, "file_meta", Dataset())
    frames = _int_or_none(header, "NumberOfFrames")
    return VideoProbe(
        path=Path(path),
        sop_class_uid=_str_or_none(header, "SOPClassUID"),
        transfer_syntax_uid=_str_or_none(meta, "TransferSyntaxUID"),
        study_instance_uid=_str_or_none(header, "StudyInstanceUID"),
        series_instance_uid=_str_or_none(header, "SeriesInstanceUID"),
        sop_instance_uid=_str_or_none(header, "SOPInstanceUID"),
        number_of_frames=1 if frames is None else frames,
        rows=_int_or_none(header, "Rows"),
        columns=_int_or_none(header, "Columns"),
    )


class VideoSource:
    """An opened video: identity, geometry, timing, and frame-by-frame RGB decoding.

    Made by :func:`open_video`; nothing is held open between calls of :meth:`frames`.

    Attributes
    ----------
    path : pathlib.Path
        The file (or, for a series, the first file).
    kind : str
        ``"dicom-video"`` (MPEG-2/H.264/HEVC), ``"dicom-multiframe"`` (native/RLE/JPEG),
        ``"dicom-series"`` (single-frame images) or ``"file"`` (plain MP4/MPEG-TS).
    header : pydicom.Dataset or None
        The instance header without Pixel Data (for a series, the first image's), with
        ``file_meta``; ``None`` for a plain file.
    transfer_syntax_uid : str or None
    rows, columns : int
        Frame size (pixels) of the frames yielded.
    frame_count : int
        Number of frames.
    timing : FrameTiming
        Per-frame times.
    series_paths : tuple of pathlib.Path
        For a series, every file in frame order; otherwise ``(path,)``.
    decoder : AVDecoder or None
        The stream's decoder for MPEG-2/H.264/HEVC (``"dicom-video"`` and ``"file"``);
        ``None`` for frames read by pydicom.
    """

    def __init__(self, *, path: Path, kind: str, header: Dataset | None,
                 transfer_syntax_uid: str | None, rows: int, columns: int, timing: FrameTiming,
                 reader: _FrameReader, series_paths: Sequence[Path] = (),
                 series_headers: Sequence[Dataset] = (), decoder: AVDecoder | None = None
                 ) -> None:
        self.path = path
        self.kind = kind
        self.header = header
        self.transfer_syntax_uid = transfer_syntax_uid
        self.rows = rows
        self.columns = columns
        self.timing = timing
        self.series_paths = tuple(series_paths) or (path,)
        self._series_headers = tuple(series_headers)
        self._reader = reader
        self.decoder = decoder

    def __repr__(self) -> str:
        return (f"VideoSource(kind={self.kind!r}, frames={self.frame_count}, "
                f"size={self.columns}x{self.rows}, fps={self.fps:.3f}, path={str(self.path)!r})")

    # -- identity --------------------------------------------------------------------
    def _uid(self, keyword: str) -> str | None:
        return None if self.header is None else _str_or_none(self.header, keyword)

    @property
    def study_instance_uid(self) -> str | None:
        """Study Instance UID (0020,000D); ``None`` for a plain file."""
        return self._uid("StudyInstanceUID")

    @property
    def series_instance_uid(self) -> str | None:
        """Series Instance UID (0020,000E); ``None`` for a plain file."""
        return self._uid("SeriesInstanceUID")

    @property
    def sop_instance_uid(self) -> str | None:
        """SOP Instance UID (0008,0018) of the instance; for a series, of its first image."""
        return self._uid("SOPInstanceUID")

    @property
    def sop_class_uid(self) -> str | None:
        """SOP Class UID (0008,0016); for a series, of its first image."""
        return self._uid("SOPClassUID")

    def frame_reference(self, index: int) -> tuple[str | None, str | None, int | None]:
        """What a result object references for frame ``index`` (0-based).

        Returns
        -------
        (sop_class_uid, sop_instance_uid, frame_number)
            ``frame_number`` is the 1-based Referenced Frame Number for a multi-frame
            instance and ``None`` for an image of a single-frame series.
        """
        if not 0 <= index < self.frame_count:
            raise IndexError(f"frame index {index} outside 0..{self.frame_count - 1}")
        if self.kind == "dicom-series":
            h = self._series_headers[index]
            return _str_or_none(h, "SOPClassUID"), _str_or_none(h, "SOPInstanceUID"), None
        return self.sop_class_uid, self.sop_instance_uid, index + 1

    # -- timing ----------------------------------------------------------------------
    @property
    def frame_count(self) -> int:
        """Number of frames."""
        return self.timing.n_frames

    @property
    def frame_times(self) -> np.ndarray:
        """Per-frame times, ``float64 (N,)``, seconds from the first frame."""
        return self.timing.times

    @property
    def fps(self) -> float:
        """Mean frame rate (frames/s); ``nan`` for a single frame."""
        return self.timing.fps

    @property
    def duration_s(self) -> float:
        """Duration (s), first frame to the end of the last."""
        return self.timing.duration_s

    def frame_to_time(self, index: int) -> float:
        """Time (s) of frame ``index`` (0-based)."""
        return self.timing.frame_to_time(index)

    def time_to_frame(self, time_s: float) -> int:
        """Index (0-based) of the frame on display at ``time_s`` seconds."""
        return self.timing.time_to_frame(time_s)

    # -- frames ----------------------------------------------------------------------
    def frame_range(self, start: int = 0, stop: int | None = None, step: int = 1) -> range:
        """The indices :meth:`frames` yields for these arguments (validated, ``stop`` clipped).

        Raises
        ------
        TypeError, ValueError
            ``start``/``step`` not ints, ``start < 0``, ``step < 1``, ``stop`` negative.
        """
        for name, value in (("start", start), ("step", step)):
            if not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        if stop is not None and (not isinstance(stop, (int, np.integer)) or stop < 0):
            raise ValueError(f"stop must be None or an int >= 0, got {stop!r}")
        stop = self.frame_count if stop is None else min(stop, self.frame_count)
        return range(int(start), int(stop), int(step))

    @staticmethod
    def wanted_indices(wanted: Iterable[int] | None) -> Container[int] | None:
        """``wanted`` as :meth:`frames` tests it: ``None`` (every frame), a ``range`` as is,
        any other collection of ints as a frozenset.

        Raises
        ------
        TypeError
            ``wanted`` is not a collection of ints (a string, a float in it...).
        """
        if wanted is None or isinstance(wanted, range):
            return wanted
        if isinstance(wanted, str | bytes) or not isinstance(wanted, Iterable):
            raise TypeError(f"wanted must be None or a collection of frame indices, got "
                            f"{type(wanted).__name__}")
        indices = frozenset(wanted)
        bad = next((i for i in indices if isinstance(i, bool)
                    or not isinstance(i, (int, np.integer))), None)
        if bad is not None:
            raise TypeError(f"wanted must hold int frame indices, got {bad!r}")
        return indices

    def frames(self, start: int = 0, stop: int | None = None, step: int = 1, *,
               workers: int = 1, wanted: Collection[int] | None = None
               ) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yield ``(index, time_s, rgb)`` for frames ``start, start+step, ...`` below ``stop``.

        Parameters
        ----------
        start, stop, step : int
            As in :func:`range`, 0-based; ``stop=None`` means to the last frame. A start
            after the first second is reached by seeking (DICOM video, plain files).
        workers : int
            Decoding threads. 1 decodes in the calling thread; more decode segments of
            the stream (key frame to key frame) side by side and yield the same frames
            (:func:`dicom_io.parallel.parallel_frames`).
        wanted : collection of int, optional
            The indices the caller uses: only these frames of the range are converted to
            RGB and yielded, each exactly as without ``wanted``. With ``workers=1`` a video
            stream is still decoded frame by frame, and damage is raised where it would be;
            with more, only the stream's segments holding a wanted frame are decoded, each
            up to its last wanted frame (damage elsewhere goes unseen: a few frames spread
            over a long video cost their segments, :mod:`dicom_io.parallel`). ``None``, the
            default: every frame of the range.

        Yields
        ------
        index : int
        time_s : float
            Seconds from the first frame (DICOM timing).
        rgb : numpy.ndarray
            ``uint8`` of shape ``(rows, columns, 3)``.

        Raises
        ------
        TruncatedVideoError
            After the frames before the damage, when the stream is truncated or damaged.
        VideoDecodeError
            When a frame cannot be decoded.
        """
        wanted = self.wanted_indices(wanted)
        if not (isinstance(workers, int) and workers == 1):
            yield from parallel_frames(self, start, stop, step, workers=workers, wanted=wanted)
            return
        frames = self.frame_range(start, stop, step)
        if not frames:
            return
        times = self.timing.times
        for index, rgb in self._reader(frames.start, frames.stop, frames.step, wanted=wanted):
            yield index, float(times[index]), rgb

    def window(self, start_s: float, end_s: float, step: int = 1, *, workers: int = 1
               ) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yield the frames whose time is in ``[start_s, end_s)`` (seconds), seeking to it
        (``workers`` as in :meth:`frames`)."""
        if not (math.isfinite(start_s) and math.isfinite(end_s)):
            raise ValueError(f"window bounds must be finite seconds, got {start_s!r}, {end_s!r}")
        times = self.timing.times
        first = int(np.searchsorted(times, start_s - 1e-6, side="left"))
        last = int(np.searchsorted(times, end_s - 1e-6, side="left"))
        return self.frames(first, last, step, workers=workers)


# -- opening ---------------------------------------------------------------------------
def open_video(source: PathArg | Iterable[PathArg], *, fallback_fps: float | None = None,
               thread_type: str = "AUTO") -> VideoSource:
    """Open a DICOM video, multi-frame instance, single-frame series or plain video file.

    Parameters
    ----------
    source : path-like or iterable of path-like
        A file; a directory of single-frame images; or a list of single-frame images.
    fallback_fps : float, optional
        Frame rate (frames/s) to assume when neither DICOM nor the stream gives timing.
    thread_type : str
        PyAV decoder threading for MPEG/H.264/HEVC (``"AUTO"``, ``"FRAME"``, ``"NONE"``).

    Raises
    ------
    InvalidInstanceError
        Not DICOM nor a readable video file, or required attributes missing.
    UnsupportedTransferSyntaxError
        SOP class not a video/endoscopic image class, or transfer syntax not decodable.
    MissingTimingError
        No usable frame timing and no ``fallback_fps``.
    EmptyVideoError
        Zero frames.
    VideoDecodeError
        The bit stream cannot be opened, or its fragments are corrupt from the start.
    """
    if not isinstance(source, (str, os.PathLike)):
        return _open_series(list_series_files(source), fallback_fps, skip_non_dicom=False)
    path = Path(source)
    if path.is_dir():
        return _open_series(list_series_files(path), fallback_fps, skip_non_dicom=True)
    if not path.is_file():
        raise InvalidInstanceError(f"{path}: no such file")
    try:
        header, pixel_offset = read_header(path)
    except InvalidInstanceError as dicom_error:
        try:
            return _open_plain(path, fallback_fps, thread_type)
        except VideoDecodeError:
            raise InvalidInstanceError(f"{path}: neither DICOM nor a readable video file "
                                       f"({dicom_error})") from dicom_error
    sop_class = _str_or_none(header, "SOPClassUID")
    ts = _str_or_none(getattr(header, "file_meta", Dataset()), "TransferSyntaxUID")
    ok, reason = check_supported(sop_class, ts)
    if not ok:
        raise UnsupportedTransferSyntaxError(f"{path}: {reason}")
    if pixel_offset is None:
        raise InvalidInstanceError(f"{path}: no Pixel Data element")
    if ts in VIDEO_TRANSFER_SYNTAXES:
        return _open_dicom_video(path, header, pixel_offset, fallback_fps, thread_type)
    if sop_class == VL_ENDOSCOPIC or "NumberOfFrames" not in header:
        return _open_series([path], fallback_fps, skip_non_dicom=False)
    return _open_multiframe(path, header, pixel_offset, fallback_fps)


def _frame_count(path: Path, header: Dataset) -> int:
    n = _int_or_none(header, "NumberOfFrames")
    if n is None:
        raise InvalidInstanceError(f"{path}: Number of Frames (0028,0008) is missing")
    if n <= 0:
        raise EmptyVideoError(f"{path}: Number of Frames is {n}; the video holds no frame")
    return n


def check_declared_frames(declared: int, counted: int) -> tuple[bool, str]:
    """Whether a header's Number of Frames is credible for a stream holding ``counted``.

    A stream a little short of its header is a truncation (its good frames are decoded
    and the damage reported); one holding less than half of what the header claims (with
    64 frames of slack) is a header that lies, refused before anything proportional to it
    is allocated.

    Returns
    -------
    (ok, reason) : tuple of (bool, str)
    """
    if declared > 2 * counted + 64:
        return False, (f"Number of Frames (0028,0008) is {declared} but the pixel data "
                       f"holds {counted} frame(s)")
    return True, ""


def _check_stream_frames(path: Path, declared: int, decoder: AVDecoder) -> None:
    """Refuse a Number of Frames far above what the bit stream holds (see
    :func:`check_declared_frames`); the stream is demuxed (not decoded) only for counts
    above :data:`_UNCHECKED_FRAMES` that the container does not state."""
    counted = decoder.info.frames
    if not counted:
        if declared <= _UNCHECKED_FRAMES:
            return
        counted = decoder.count_packets(stop_on_error=True)
    ok, why = check_declared_frames(declared, counted)
    if not ok:
        raise InvalidInstanceError(f"{path}: {why}")


def _pixel_element_length(path: Path, offset: int) -> int | None:
    """The defined length (bytes) of the Pixel Data element at ``offset``; ``None`` when
    undefined (encapsulated), 0 when the file ends inside its header."""
    with open(path, "rb") as fh:
        header = element_length(fh, offset)
    if header is None:
        return 0
    return None if header[0] == 0xFFFFFFFF else header[0]


def _check_pixel_frames(path: Path, header: Dataset, offset: int, n: int, rows: int,
                        cols: int) -> None:
    """Refuse a Number of Frames (or Rows/Columns) the Pixel Data cannot hold, before
    anything proportional to them is allocated.

    Native pixel data must hold ``n`` frames of ``rows x cols`` samples; encapsulated data
    (RLE, JPEG) needs at least one fragment per frame (PS3.5 A.4).
    """
    length = _pixel_element_length(path, offset)
    if length is None:
        counted = len(index_fragments(path, offset).offsets)
        if counted < n:
            raise InvalidInstanceError(
                f"{path}: Number of Frames (0028,0008) is {n} but the pixel data holds "
                f"{counted} fragment(s), at least one per frame being required")
        return
    if header.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # deflated: the element's length is not that of the inflated frames
    samples = _int_or_none(header, "SamplesPerPixel") or 1
    bits = _int_or_none(header, "BitsAllocated") or 8
    frame_bytes = rows * cols * samples * bits // 8
    if frame_bytes * n > length:
        raise InvalidInstanceError(
            f"{path}: Number of Frames (0028,0008) is {n} of {rows}x{cols} but the pixel "
            f"data holds {length} bytes, {length // max(1, frame_bytes)} frame(s)")


def _geometry(path: Path, header: Dataset) -> tuple[int, int]:
    rows, cols = _int_or_none(header, "Rows"), _int_or_none(header, "Columns")
    if not rows or not cols:
        raise InvalidInstanceError(f"{path}: Rows/Columns missing or zero ({rows}x{cols})")
    return rows, cols


def _fallback(path: Path, n: int, fallback_fps: float | None, what: str) -> FrameTiming:
    if fallback_fps is None:
        raise MissingTimingError(f"{path}: no frame timing ({what}); pass fallback_fps to "
                                 "assume a frame rate")
    logger.warning("%s: no frame timing (%s); assuming %g frames/s", path, what, fallback_fps)
    return FrameTiming.uniform(n, fallback_fps, "fallback fps")


def _open_dicom_video(path: Path, header: Dataset, pixel_offset: int,
                      fallback_fps: float | None, thread_type: str) -> VideoSource:
    n = _frame_count(path, header)
    rows, cols = _geometry(path, header)
    fragments = index_fragments(path, pixel_offset)
    decoder = AVDecoder(path, fragments, frame_count=n, thread_type=thread_type)
    _check_stream_frames(path, n, decoder)  # before the timing allocates n values
    timing = timing_from_dataset(header, n)
    decoder.times = None if timing is None else timing.times
    info = decoder.info
    if info.container_format not in _PLAIN_FORMATS:
        raise VideoDecodeError(f"{path}: the bit stream's container ({info.container_format!r}) "
                               "is not MPEG-TS/PS or MP4")
    expected = VIDEO_TRANSFER_SYNTAXES[header.file_meta.TransferSyntaxUID]
    if {"h264": "h264", "hevc": "hevc", "mpeg2video": "mpeg2"}.get(info.codec) != expected:
        logger.warning("%s: the transfer syntax announces %s but the stream is %s; decoding "
                       "the stream", path, expected, info.codec)
    if (info.height, info.width) != (rows, cols):
        logger.warning("%s: Rows/Columns %dx%d differ from the stream's %dx%d; frames are "
                       "the stream's size", path, rows, cols, info.height, info.width)
        rows, cols = info.height, info.width
    if timing is None:
        if info.rate:
            logger.warning("%s: no Frame Time or Frame Time Vector; using the stream's %.3f "
                           "frames/s", path, info.rate)
            timing = FrameTiming.uniform(n, info.rate, "stream")
        else:
            timing = _fallback(path, n, fallback_fps, "no Frame Time, Frame Time Vector or "
                               "stream rate")
        decoder.times = timing.times
    elif info.rate and not math.isnan(timing.fps):
        mismatch = abs(info.rate / timing.fps - 1)
        if mismatch > _RATE_TOLERANCE:
            logger.warning("%s: DICOM timing gives %.3f frames/s but the stream %.3f; using "
                           "the DICOM timing", path, timing.fps, info.rate)
        elif timing.source == "FrameTime" and mismatch > 0:
            # the same rate, rounded in the DS string ("33.3333"): keep the exact value so
            # that times do not drift over a long video
            timing = FrameTiming.uniform(n, info.rate, "FrameTime")
            decoder.times = timing.times
    return VideoSource(path=path, kind="dicom-video", header=header,
                       transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
                       rows=rows, columns=cols, timing=timing, reader=decoder.iter_frames,
                       decoder=decoder)


def _selected(indices: range, wanted: Container[int] | None) -> Sequence[int]:
    """The ``indices`` in ``wanted`` (all when ``None``): frames read by pydicom decode alone,
    so the others are not read at all."""
    return indices if wanted is None else [i for i in indices if i in wanted]


def _open_multiframe(path: Path, header: Dataset, pixel_offset: int,
                     fallback_fps: float | None) -> VideoSource:
    n = _frame_count(path, header)
    rows, cols = _geometry(path, header)
    _check_pixel_frames(path, header, pixel_offset, n, rows, cols)
    timing = timing_from_dataset(header, n)
    if timing is None:
        timing = _fallback(path, n, fallback_fps, "no Frame Time or Frame Time Vector")

    def reader(start: int, stop: int | None, step: int, wanted: Container[int] | None = None
               ) -> Iterator[tuple[int, np.ndarray]]:
        return iter_multiframe(path, header, _selected(range(start, n if stop is None else stop,
                                                             step), wanted))

    return VideoSource(path=path, kind="dicom-multiframe", header=header,
                       transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
                       rows=rows, columns=cols, timing=timing, reader=reader)


def _open_series(paths: list[Path], fallback_fps: float | None, skip_non_dicom: bool
                 ) -> VideoSource:
    series = order_series(paths, skip_non_dicom=skip_non_dicom)
    first, header = series.paths[0], series.headers[0]
    for p, h in zip(series.paths, series.headers, strict=True):
        ok, reason = check_supported(_str_or_none(h, "SOPClassUID"),
                                     _str_or_none(h.file_meta, "TransferSyntaxUID"))
        if not ok:
            raise UnsupportedTransferSyntaxError(f"{p}: {reason}")
    rows, cols = _geometry(first, header)
    n = len(series.paths)
    timing = series.timing
    if n == 1:
        timing = FrameTiming(np.zeros(1), "single frame")
    elif timing is None:
        timing = _fallback(first, n, fallback_fps, "no temporal attribute in every image")
    headers = series.headers

    def reader(start: int, stop: int | None, step: int, wanted: Container[int] | None = None
               ) -> Iterator[tuple[int, np.ndarray]]:
        for i in _selected(range(start, n if stop is None else stop, step), wanted):
            yield i, read_single(series.paths[i], headers[i])

    return VideoSource(path=first, kind="dicom-series", header=header,
                       transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
                       rows=rows, columns=cols, timing=timing, reader=reader,
                       series_paths=series.paths, series_headers=headers)


def _open_plain(path: Path, fallback_fps: float | None, thread_type: str) -> VideoSource:
    decoder = AVDecoder(path, None, frame_count=None, thread_type=thread_type)
    if decoder.info.container_format not in _PLAIN_FORMATS:
        raise VideoDecodeError(f"{path}: container {decoder.info.container_format!r} is not "
                               "a video file format (MP4, MPEG-TS/PS, Matroska, AVI)")
    n = decoder.info.frames or decoder.count_packets()
    if n <= 0:
        raise EmptyVideoError(f"{path}: the video holds no frame")
    if decoder.info.rate:
        timing = FrameTiming.uniform(n, decoder.info.rate, "stream")
    else:
        timing = _fallback(path, n, fallback_fps, "the stream gives no frame rate")
    decoder.frame_count, decoder.times = n, timing.times
    return VideoSource(path=path, kind="file", header=None, transfer_syntax_uid=None,
                       rows=decoder.info.height, columns=decoder.info.width, timing=timing,
                       reader=decoder.iter_frames, decoder=decoder)
