"""Shared fixtures for dicom_io tests: tiny, really encoded videos wrapped as DICOM.

Every fixture encodes with PyAV (libx264/mpeg2video/libx265) through
:mod:`dicom_io.encode`; the clips are a few dozen frames of 64x96 so they take well
under a second each. Session-scoped: do not modify the files they return.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import pytest

from dicom_io.encode import VideoMetadata, encode_video, wrap_video_as_dicom
from dicom_io.tools import dcmtk_program
from tests.dicom_io._net_fixtures import free_port, wait_port


def synthetic_frames(n: int, rows: int = 64, cols: int = 96, seed: int = 0) -> np.ndarray:
    """RGB ``uint8 (n, rows, cols, 3)`` frames that differ clearly from one frame to the next.

    A smooth gradient shifted by 16 grey levels per frame plus a bright square moving
    4 pixels per frame, so a frame decoded at the wrong index is easy to tell apart.
    """
    y, x = np.mgrid[0:rows, 0:cols]
    rng = np.random.default_rng(seed)
    tint = rng.integers(0, 64, size=3)
    out = np.empty((n, rows, cols, 3), dtype=np.uint8)
    for i in range(n):
        out[i, ..., 0] = (x * 2 + i * 16 + tint[0]) % 256
        out[i, ..., 1] = (y * 3 + i * 8 + tint[1]) % 256
        out[i, ..., 2] = (x + y + i * 24 + tint[2]) % 256
        c = (i * 4) % max(1, cols - 16)
        out[i, 8:24, c:c + 16] = 255
    return out


@dataclass(frozen=True)
class EncodedVideo:
    """A generated video file and what went into it.

    Attributes
    ----------
    path : pathlib.Path
        The DICOM (or plain video) file.
    frames : numpy.ndarray
        The source frames, ``uint8 (N, H, W, 3)``.
    fps : float
        Frame rate used for encoding (frames/s).
    transfer_syntax : str or None
        Transfer Syntax UID of the DICOM file; ``None`` for a plain file.
    stream : pathlib.Path or None
        The MPEG-TS/MP4 file that was wrapped, if any.
    """

    path: Path
    frames: np.ndarray
    fps: float
    transfer_syntax: str | None
    stream: Path | None = None


VideoFactory = Callable[..., EncodedVideo]


@pytest.fixture(scope="session")
def make_video(tmp_path_factory: pytest.TempPathFactory) -> VideoFactory:
    """Factory: ``make_video(codec="h264", n=30, fps=30.0, transfer_syntax=None, ...)``.

    Keyword arguments: ``rows``, ``cols``, ``container`` (``"ts"`` or ``"mp4"``),
    ``fragment_size`` (bytes, for the ``.1`` syntaxes and HEVC), ``frame_time_vector``,
    ``gop`` (keyframe interval), ``crf``, ``meta`` (:class:`VideoMetadata`), ``dicom``
    (False returns the plain stream). Results are cached per argument set, ``meta`` by
    its field values (an ``id`` is reused once an earlier ``meta`` is freed).
    """
    root = tmp_path_factory.mktemp("videos")
    cache: dict[tuple, EncodedVideo] = {}

    def factory(codec: str = "h264", n: int = 30, fps: float = 30.0,
                transfer_syntax: str | None = None, rows: int = 64, cols: int = 96,
                container: str = "ts", fragment_size: int | None = None,
                frame_time_vector: bool = False, gop: int | None = None,
                crf: int | None = None, meta: VideoMetadata | None = None,
                dicom: bool = True) -> EncodedVideo:
        key = (codec, n, fps, transfer_syntax, rows, cols, container, fragment_size,
               frame_time_vector, gop, crf, None if meta is None else astuple(meta), dicom)
        if key in cache:
            return cache[key]
        frames = synthetic_frames(n, rows, cols)
        name = f"v{len(cache):03d}_{codec}"
        stream = root / f"{name}.{container}"
        encode_video(frames, stream, fps, codec=codec, gop=gop, crf=crf)
        if dicom:
            path = root / f"{name}.dcm"
            ds = wrap_video_as_dicom(stream, path, transfer_syntax, meta, fps=fps,
                                     fragment_size=fragment_size,
                                     frame_time_vector=frame_time_vector)
            result = EncodedVideo(path, frames, fps, str(ds.file_meta.TransferSyntaxUID), stream)
        else:
            result = EncodedVideo(stream, frames, fps, None, stream)
        cache[key] = result
        return result

    return factory


@pytest.fixture(scope="session")
def h264_video_dicom(make_video: VideoFactory) -> EncodedVideo:
    """A 30-frame 64x96 H.264 HP@L4.1 Video Endoscopic instance at 30 frames/s."""
    return make_video("h264", n=30, fps=30.0)


def _run_dciodvfy(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise RuntimeError("dciodvfy (Debian package dicom3tools) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("Error")]


@pytest.fixture(scope="session")
def dciodvfy_errors() -> Callable[[Path], list[str]]:
    """``dciodvfy_errors(path)``: the ``Error`` lines dicom3tools' dciodvfy prints for a file."""
    return _run_dciodvfy


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp accepting every transfer syntax it knows, bit-preserving."""
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([dcmtk_program("storescp"), "+xa", "+B", "-aet", "STORESCP", "-od", str(out),
                             "-fe", ".dcm", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)
