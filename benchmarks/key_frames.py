"""Frames read after an analysis (each event's key frame with its segmenter's neighbours),
against the reading of session 53 (the baseline), measured in the same run.

Usage::

    .venv/bin/python benchmarks/key_frames.py                  # 60 s of 720p H.264, best of 2
    .venv/bin/python benchmarks/key_frames.py --quick          # 20 s
    .venv/bin/python benchmarks/key_frames.py --seconds 600    # a 10-minute video

Why: once an analysis has found its events, ``amagi process`` reads each event's key frame
and the frames its temporal segmenter sees around it (5 frames 0.1 s apart) again, for the
SEG masks and key images, and a few frames of the first events for the report's previews.
On the pipeline benchmark's 720p video (one key frame every 250 frames, x264's default) a
model raising 10 events spent about 8 s there, longer than decoding the whole minute
(session 53). The baseline reads as session 53 did (``amagi_plugin.pipeline.read_frames``
then, kept here): frames at most 2 s apart in one serial decode, each farther group
reached by a seek (MPEG-TS seeks land near, not on, a key frame and are retried further
back). Now (``read_frames``): one sparse read, which demuxes the stream once and decodes
only the segments holding a wanted frame, each from its key frame up to its last wanted
frame, in 2 threads (``dicom_io.parallel``). Both give the same frames (checked here, bit
for bit). Rows: events spread evenly over the video; two key-frame intervals (250 frames,
and 30: one a second, as many recorders write); the whole video's decode for scale. The
column "one plan" is the sparse read with every run planned from the stream's start (no
seek: the planner demuxes everything before the last wanted frame), which isolates what
planning each far run from a seek near it saves on a long video.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from pipeline import make_video  # noqa: E402

from amagi_plugin.pipeline import read_frames  # noqa: E402
from dicom_io import keyframes, parallel  # noqa: E402
from dicom_io.keyframes import key_frames  # noqa: E402
from dicom_io.video import open_video  # noqa: E402

NEIGHBOURS = (-6, -3, 0, 3, 6)  # a 5-frame segmenter, 0.1 s apart at 30 frames/s


def grouped_seeks(video, numbers) -> dict[int, np.ndarray]:
    """The baseline: session 53's ``read_frames`` (2 s groups, a serial decode each)."""
    out: dict[int, np.ndarray] = {}
    gap = max(1, round(2.0 * video.fps))
    groups: list[list[int]] = []
    for number in sorted(set(numbers)):
        if groups and number - groups[-1][-1] <= gap:
            groups[-1].append(number)
        else:
            groups.append([number])
    for group in groups:
        wanted = {n - 1 for n in group}
        for index, _t, rgb in video.frames(group[0] - 1, group[-1], wanted=wanted):
            if index in wanted:
                out[index + 1] = rgb
    return out


def whole_decode(video) -> int:
    return sum(1 for _ in video.frames(wanted=()))


def one_plan(video, numbers) -> dict[int, np.ndarray]:
    """The sparse read with all wanted frames in one plan from the stream's start."""
    gap, parallel.PLAN_GAP_S = parallel.PLAN_GAP_S, 1e9  # one run: one plan
    near, keyframes.MIN_SEEK_S = keyframes.MIN_SEEK_S, 1e9  # that plan without a seek
    try:
        return read_frames(video, numbers)
    finally:
        parallel.PLAN_GAP_S, keyframes.MIN_SEEK_S = gap, near


def best_of(n: int, fn, *args) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 s of video, 1, 3 and 10 events")
    ap.add_argument("--seconds", type=int, default=60, help="video length (default 60)")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many (default 2)")
    ap.add_argument("--video-dir", type=Path, default=ROOT / "out")
    args = ap.parse_args(argv)
    seconds = 20 if args.quick else args.seconds
    counts = (1, 3, 10) if args.quick else (1, 10, 30)
    print(f"| key frames every | events in {seconds} s | frames read | baseline: grouped "
          f"seeks (s) | sparse read (s) | speed-up | one plan (s) | whole video decoded (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for gop in (None, 30):
        name = f"key_frames_720p_{seconds}s_gop{gop or 250}.dcm"
        video = open_video(make_video(args.video_dir / name, seconds, gop=gop))
        keys = key_frames(video.decoder)
        interval = round(np.diff(keys).mean()) if len(keys) > 1 else video.frame_count
        whole, _ = best_of(1, whole_decode, video)
        for n in counts:
            centres = np.linspace(0, video.frame_count, n + 2)[1:-1].astype(int)
            numbers = sorted({int(c) + d for c in centres for d in NEIGHBOURS})
            t_base, base = best_of(args.repeats, grouped_seeks, video, numbers)
            t_new, new = best_of(args.repeats, read_frames, video, numbers)
            t_one, one = best_of(args.repeats, one_plan, video, numbers)
            assert sorted(base) == sorted(new) == sorted(one) == numbers, "frames missing"
            assert all(np.array_equal(base[k], new[k]) and np.array_equal(base[k], one[k])
                       for k in numbers), "pixels differ"
            print(f"| {interval} frames | {n} | {len(numbers)} | {t_base:.2f} | {t_new:.2f} "
                  f"| {t_base / t_new:.1f}× | {t_one:.2f} | {whole:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
