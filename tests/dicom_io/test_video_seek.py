"""Seeking: frames(start, stop, step) and window() reach the right frames without decoding from 0."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dicom_io.video import open_video

pytestmark = pytest.mark.timeout(120)

N, FPS, GOP = 120, 30.0, 15  # 4 s, a keyframe every 0.5 s

# (codec, container, transfer syntax, fragment size, DICOM or plain file)
SEEK_CASES = [
    ("h264", "ts", None, None, True),
    ("h264", "ts", "1.2.840.10008.1.2.4.102.1", 2000, True),
    ("h264", "mp4", None, None, True),
    ("mpeg2", "ts", "1.2.840.10008.1.2.4.101.1", 4000, True),
    ("hevc", "ts", "1.2.840.10008.1.2.4.107", 3000, True),
    ("h264", "ts", None, None, False),
    ("h264", "mp4", None, None, False),
    ("mpeg2", "ts", None, None, False),
]


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _first_decoded(caplog) -> int:
    """Index of the first frame decoded after a seek, from the decoder's debug log."""
    found = [int(m.group(1)) for r in caplog.records
             if (m := re.search(r"seeked to .* first frame (\d+)", r.getMessage()))]
    assert found, "the decoder did not seek"
    return found[-1]


@pytest.mark.parametrize(("codec", "container", "ts", "fragment_size", "dicom"), SEEK_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[3] or 1}-{'dcm' if c[4] else 'plain'}"
                              for c in SEEK_CASES])
def test_seek_lands_on_the_right_frames(make_video, caplog, codec, container, ts,
                                        fragment_size, dicom):
    vid = make_video(codec, n=N, fps=FPS, container=container, transfer_syntax=ts,
                     fragment_size=fragment_size, gop=GOP, dicom=dicom)
    src = open_video(vid.path)
    with caplog.at_level("DEBUG", logger="dicom_io.avdecode"):
        got = list(src.frames(90, 96, 2))
    assert [i for i, _, _ in got] == [90, 92, 94]
    assert [t for _, t, _ in got] == pytest.approx([3.0, 92 / 30, 94 / 30], abs=1e-5)
    for i, _, rgb in got:
        errors = [_mae(rgb, vid.frames[j]) for j in range(N)]
        assert int(np.argmin(errors)) == i, f"frame {i} decodes as {int(np.argmin(errors))}"
    first = _first_decoded(caplog)
    assert 30 <= first <= 90, "seek should start at a keyframe shortly before frame 90"


def test_window_in_seconds(make_video, caplog):
    vid = make_video("h264", n=N, fps=FPS, gop=GOP)
    src = open_video(vid.path)
    with caplog.at_level("DEBUG", logger="dicom_io.avdecode"):
        got = list(src.window(2.5, 2.7))
    assert [i for i, _, _ in got] == [75, 76, 77, 78, 79, 80]
    assert _first_decoded(caplog) > 0
    assert src.time_to_frame(2.5) == 75 and src.frame_to_time(75) == pytest.approx(2.5, abs=1e-5)
    assert src.time_to_frame(-3.0) == 0 and src.time_to_frame(100.0) == N - 1


def test_seek_near_start_and_to_the_last_frames(make_video):
    vid = make_video("h264", n=N, fps=FPS, gop=GOP)
    src = open_video(vid.path)
    assert [i for i, _, _ in src.frames(5, 8)] == [5, 6, 7]  # < 1 s: decoded from 0
    tail = list(src.frames(N - 3))
    assert [i for i, _, _ in tail] == [N - 3, N - 2, N - 1]
    assert _mae(tail[-1][2], vid.frames[-1]) < 10
    assert list(src.frames(N)) == [] and list(src.frames(10, 10)) == []


def test_frames_argument_validation(h264_video_dicom):
    src = open_video(h264_video_dicom.path)
    with pytest.raises(ValueError, match="step must be >= 1"):
        list(src.frames(0, None, 0))
    with pytest.raises(ValueError, match="start must be >= 0"):
        list(src.frames(-1))
    with pytest.raises(TypeError, match="start must be an int"):
        list(src.frames(1.5))  # type: ignore[arg-type]


def test_early_stop_closes_cleanly(make_video):
    """Abandoning the generator mid-way releases the file (no hang, a new pass works)."""
    vid = make_video("h264", n=N, fps=FPS, gop=GOP)
    src = open_video(vid.path)
    it = src.frames()
    for _ in range(3):
        next(it)
    it.close()
    assert sum(1 for _ in src.frames(100)) == N - 100
