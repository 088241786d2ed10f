"""Encode frames as real video and wrap it as DICOM Video Endoscopic/Photographic/Microscopic.

Used by the synthetic-data generator, the tests and the benchmarks. The encapsulation
follows PS3.5 §8.2.7 (MPEG-2), §8.2.8 (H.264) and §8.2.12 (HEVC): the whole MPEG-TS or MP4
bit stream as one fragment (several for the fragmentable syntaxes and HEVC when asked),
empty Basic Offset Table, ``YBR_PARTIAL_420``. Multi-frame native, RLE and JPEG Baseline
instances are written by :func:`write_multiframe_dicom`.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_buffer
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from dicom_io.sopclasses import VIDEO_ENDOSCOPIC

# codec -> (PyAV encoder, pixel format, options, LossyImageCompressionMethod).
# x264's macroblock-tree rate control is off: with it, the same frames gave a different
# first GOP from one encode to the next (libx264 in PyAV 18), and generated data sets must
# be reproducible.
_ENCODERS: dict[str, tuple[str, str, dict[str, str], str]] = {
    "h264": ("libx264", "yuv420p", {"profile": "high", "level": "4.1", "preset": "veryfast",
                                    "x264-params": "mbtree=0"}, "ISO_14496_10"),
    "mpeg2": ("mpeg2video", "yuv420p", {"profile": "4", "level": "8"}, "ISO_13818_2"),
    "hevc": ("libx265", "yuv420p", {"x265-params": "log-level=error:profile=main:level-idc=5.1",
                                    "preset": "ultrafast"}, "ISO_23008_2"),
}

# transfer syntax -> codec; PS3.5 Table A-1 (MPEG-2, H.264 and HEVC families)
VIDEO_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2.4.100": "mpeg2",  # MPEG-2 MP@ML
    "1.2.840.10008.1.2.4.100.1": "mpeg2",  # MPEG-2 MP@ML (fragmentable)
    "1.2.840.10008.1.2.4.101": "mpeg2",  # MPEG-2 MP@HL
    "1.2.840.10008.1.2.4.101.1": "mpeg2",
    "1.2.840.10008.1.2.4.102": "h264",  # MPEG-4 AVC/H.264 HP@L4.1
    "1.2.840.10008.1.2.4.102.1": "h264",
    "1.2.840.10008.1.2.4.103": "h264",  # HP@L4.1 BD-compatible
    "1.2.840.10008.1.2.4.103.1": "h264",
    "1.2.840.10008.1.2.4.104": "h264",  # HP@L4.2 2D video
    "1.2.840.10008.1.2.4.104.1": "h264",
    "1.2.840.10008.1.2.4.105": "h264",  # HP@L4.2 3D video
    "1.2.840.10008.1.2.4.105.1": "h264",
    "1.2.840.10008.1.2.4.106": "h264",  # Stereo HP@L4.2
    "1.2.840.10008.1.2.4.106.1": "h264",
    "1.2.840.10008.1.2.4.107": "hevc",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108": "hevc",  # HEVC/H.265 Main 10 Profile / Level 5.1
}

DEFAULT_TRANSFER_SYNTAX = {
    "h264": "1.2.840.10008.1.2.4.102",
    "mpeg2": "1.2.840.10008.1.2.4.100",
    "hevc": "1.2.840.10008.1.2.4.107",
}


@dataclass
class VideoMetadata:
    """Patient/study/series identity written into a generated video instance.

    The defaults describe an obviously synthetic patient; UIDs are fresh unless given.
    """

    patient_name: str = "SYNTHETIC^DEMO"
    patient_id: str = "SYNTH-0001"
    patient_birth_date: str = ""
    patient_sex: str = "O"
    study_instance_uid: str = field(default_factory=generate_uid)
    series_instance_uid: str = field(default_factory=generate_uid)
    sop_instance_uid: str = field(default_factory=generate_uid)
    study_id: str = "1"
    accession_number: str = ""
    study_date: str = field(default_factory=lambda: _dt.date.today().strftime("%Y%m%d"))
    study_time: str = "080000"
    study_description: str = "Robotic gastrectomy (synthetic)"
    series_number: int = 1
    instance_number: int = 1
    series_description: str = "Endoscopic video"
    manufacturer: str = "AMAGI synthetic generator"
    sop_class_uid: str = VIDEO_ENDOSCOPIC
    modality: str = "ES"


def encode_video(
    frames: Iterable[np.ndarray],
    path: str | os.PathLike[str],
    fps: float,
    codec: str = "h264",
    container: str | None = None,
    bitrate: int | None = None,
    crf: int | None = None,
    gop: int | None = None,
    preset: str | None = None,
) -> int:
    """Encode RGB ``uint8 (H, W, 3)`` frames to an MPEG-TS (default) or MP4 file.

    ``preset`` is the x264/x265 speed preset (``ultrafast`` ... ``veryslow``).

    Returns the number of frames written. ``container`` is taken from the suffix when
    ``None`` (``.mp4`` → mp4, anything else → mpegts).
    """
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {sorted(_ENCODERS)}, got {codec!r}")
    encoder, pix_fmt, options, _ = _ENCODERS[codec]
    path = Path(path)
    fmt = container or ("mp4" if path.suffix.lower() in (".mp4", ".m4v") else "mpegts")
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with av.open(str(path), "w", format=fmt) as out:
        stream = None
        for arr in frames:
            if stream is None:
                h, w = arr.shape[:2]
                stream = out.add_stream(encoder, rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
                opts = dict(options)
                if codec == "mpeg2" and max(w, h) > 720:
                    opts["level"] = "4"  # Main Profile @ High Level
                if crf is not None and codec != "mpeg2":
                    opts["crf"] = str(crf)
                if preset is not None and codec != "mpeg2":
                    opts["preset"] = preset
                if gop is not None:
                    stream.gop_size = gop
                if bitrate is not None:
                    stream.bit_rate = bitrate
                elif codec == "mpeg2":
                    stream.bit_rate = 8_000_000
                stream.options = opts
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr, dtype=np.uint8), "rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
            n += 1
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            out.mux(packet)
    return n


def _base_dataset(meta: VideoMetadata, n_frames: int, fps: float, rows: int, cols: int) -> Dataset:
    """The Video Endoscopic/Photographic/Microscopic Image IOD attributes (PS3.3 A.32.5-7)."""
    ds = Dataset()
    ds.SOPClassUID = meta.sop_class_uid
    ds.SOPInstanceUID = meta.sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    now = _dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Patient
    ds.PatientName = meta.patient_name
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = meta.patient_birth_date
    ds.PatientSex = meta.patient_sex
    # General Study
    ds.StudyInstanceUID = meta.study_instance_uid
    ds.StudyDate = meta.study_date
    ds.StudyTime = meta.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = meta.study_id
    ds.AccessionNumber = meta.accession_number
    ds.StudyDescription = meta.study_description
    # General Series
    ds.Modality = meta.modality
    ds.SeriesInstanceUID = meta.series_instance_uid
    ds.SeriesNumber = meta.series_number
    ds.SeriesDescription = meta.series_description
    # General Equipment
    ds.Manufacturer = meta.manufacturer
    # General / VL Image, Acquisition Context
    ds.InstanceNumber = meta.instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = meta.study_date
    ds.ContentTime = meta.study_time
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    anat = Dataset()
    anat.CodeValue, anat.CodingSchemeDesignator, anat.CodeMeaning = "818981001", "SCT", "Abdomen"
    ds.AnatomicRegionSequence = [anat]
    ds.AcquisitionContextSequence = []
    # Image Pixel
    ds.SamplesPerPixel = 3
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    # Multi-frame and Cine (PS3.3 C.7.6.6, C.7.6.5)
    ds.NumberOfFrames = n_frames
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = f"{1000.0 / fps:.12g}"
    ds.CineRate = round(fps)
    ds.RecommendedDisplayFrameRate = round(fps)
    ds.StartTrim = 1
    ds.StopTrim = n_frames
    return ds


def _file_meta(ds: Dataset, transfer_syntax: str) -> FileMetaDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = UID(transfer_syntax)
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return fm


def _probe(path: Path) -> tuple[int, float, int, int]:
    """Frame count, frame rate, height and width of an encoded stream (by decoding it)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        n = sum(1 for _ in c.demux(vs) if _.size)
        rate = float(vs.average_rate or vs.guessed_rate or 30)
        return n, rate, vs.codec_context.height, vs.codec_context.width


def wrap_video_as_dicom(
    video_path: str | os.PathLike[str],
    dicom_path: str | os.PathLike[str],
    transfer_syntax: str | None = None,
    meta: VideoMetadata | None = None,
    fps: float | None = None,
    fragment_size: int | None = None,
    frame_time_vector: bool = False,
) -> Dataset:
    """Wrap an MPEG-TS/MP4 file into a DICOM video instance, streamed from disk.

    ``fragment_size`` splits the bit stream into several fragments (only allowed for the
    fragmentable ``.1`` syntaxes and HEVC). ``frame_time_vector`` writes Frame Time Vector
    instead of Frame Time. Returns the dataset written (pixel data not loaded).
    """
    video_path, dicom_path = Path(video_path), Path(dicom_path)
    meta = meta or VideoMetadata()
    n, rate, rows, cols = _probe(video_path)
    fps = fps or rate
    with av.open(str(video_path)) as c:
        codec_name = c.streams.video[0].codec_context.name
    codec = {"h264": "h264", "hevc": "hevc", "mpeg2video": "mpeg2"}.get(codec_name)
    if codec is None:
        raise ValueError(f"{video_path}: codec {codec_name!r} has no DICOM video transfer syntax")
    transfer_syntax = transfer_syntax or DEFAULT_TRANSFER_SYNTAX[codec]
    if VIDEO_TRANSFER_SYNTAXES.get(transfer_syntax) != codec:
        raise ValueError(f"transfer syntax {transfer_syntax} does not carry {codec}")
    fragmentable = transfer_syntax.endswith(".1") or codec == "hevc"
    if fragment_size and not fragmentable:
        raise ValueError(f"{transfer_syntax} requires a single fragment (PS3.5 §8.2.8)")
    if fragment_size and fragment_size % 2:
        # an odd fragment would be padded to even length, inserting a byte into the stream
        raise ValueError(f"fragment_size must be even (PS3.5 A.4), got {fragment_size}")
    ds = _base_dataset(meta, n, fps, rows, cols)
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = _ENCODERS[codec][3]
    if frame_time_vector:
        ds.FrameIncrementPointer = Tag("FrameTimeVector")
        del ds.FrameTime
        ds.FrameTimeVector = [0.0] + [round(1000.0 / fps, 6)] * (n - 1)
    ds.file_meta = _file_meta(ds, transfer_syntax)
    with video_path.open("rb") as fh:
        if fragment_size:
            size = video_path.stat().st_size
            buffers = [_Window(fh, off, min(fragment_size, size - off))
                       for off in range(0, size, fragment_size)]
            ds.PixelData = encapsulate_buffer(buffers, has_bot=False)
        else:
            ds.PixelData = encapsulate_buffer([fh], has_bot=False)
        ds["PixelData"].VR = "OB"
        ds.save_as(dicom_path, enforce_file_format=True)
    return ds


class _Window(io.BufferedIOBase):
    """A read-only view of ``length`` bytes of ``fh`` from ``offset`` (for fragmenting).

    A :class:`io.BufferedIOBase` because :func:`pydicom.encaps.encapsulate_buffer` requires one.
    """

    def __init__(self, fh: io.BufferedReader, offset: int, length: int) -> None:
        self._fh, self._start, self._len, self._pos = fh, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, min(self._len, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        left = self._len - self._pos
        want = left if size is None or size < 0 else min(size, left)
        if want <= 0:
            return b""
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(want)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def write_video_dicom(
    frames: Iterable[np.ndarray],
    dicom_path: str | os.PathLike[str],
    fps: float = 30.0,
    codec: str = "h264",
    transfer_syntax: str | None = None,
    meta: VideoMetadata | None = None,
    keep_stream: str | os.PathLike[str] | None = None,
    **encode_kw,
) -> Dataset:
    """Encode ``frames`` and wrap them as one DICOM video instance (see :func:`encode_video`).

    ``keep_stream`` keeps the intermediate MPEG-TS/MP4 file at that path; otherwise a
    temporary file next to ``dicom_path`` is used and removed.
    """
    dicom_path = Path(dicom_path)
    stream = Path(keep_stream) if keep_stream else dicom_path.with_suffix(".tmp.ts")
    try:
        encode_video(frames, stream, fps, codec=codec, **encode_kw)
        return wrap_video_as_dicom(stream, dicom_path, transfer_syntax, meta, fps=fps)
    finally:
        if not keep_stream:
            stream.unlink(missing_ok=True)


def write_multiframe_dicom(
    frames: Iterable[np.ndarray],
    dicom_path: str | os.PathLike[str],
    fps: float = 30.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    meta: VideoMetadata | None = None,
) -> Dataset:
    """Write RGB frames as a multi-frame instance: native, RLE Lossless or JPEG Baseline.

    Holds all frames in memory: meant for tests and short clips.
    """
    from PIL import Image

    arr = np.stack(list(frames)).astype(np.uint8)
    n, rows, cols, _ = arr.shape
    meta = meta or VideoMetadata()
    ds = _base_dataset(meta, n, fps, rows, cols)
    ds.file_meta = _file_meta(ds, transfer_syntax)
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PhotometricInterpretation = "RGB"
        ds.LossyImageCompression = "00"
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OB"
    elif transfer_syntax == RLELossless:
        ds.PhotometricInterpretation = "RGB"
        ds.LossyImageCompression = "00"
        # keep the UID from ``meta`` (pydicom would generate a new one)
        ds.compress(RLELossless, arr, encoding_plugin="pydicom", generate_instance_uid=False)
    elif transfer_syntax == JPEGBaseline8Bit:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate(list(_jpeg_frames(arr, Image)))
        ds["PixelData"].VR = "OB"
    else:
        raise ValueError(f"unsupported multi-frame transfer syntax {transfer_syntax}")
    ds.save_as(dicom_path, enforce_file_format=True)
    return ds


def _jpeg_frames(arr: np.ndarray, image_module) -> Iterator[bytes]:
    for frame in arr:
        buf = io.BytesIO()
        image_module.fromarray(frame, "RGB").save(buf, format="JPEG", quality=95, subsampling=1)
        yield buf.getvalue()
