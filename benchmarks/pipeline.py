"""Whole-video pipeline benchmark: stage breakdown, real-time factor, shared vs naive clips.

    .venv/bin/python benchmarks/pipeline.py            # 10-minute 720p H.264 video
    .venv/bin/python benchmarks/pipeline.py --quick    # 30 s, for a smoke run

Every case runs in a fresh process (peak RSS per case). Ratios are against baselines measured
in the same run: the decode-only floor, and the naive scheme (three fresh clips per
prediction, as the authors' inference) on the same segment. amagi_sf50 (synthetic weights;
about 110 GFLOP per clip) only runs on the first ``--sf50-seconds`` of the video on a CPU.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# benchmarks/models.py and benchmarks/db.py would shadow the packages of the same name.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
OUT = HERE / "out"


def make_video(path: Path, seconds: float, width: int = 1280, height: int = 720,
               fps: float = 30.0) -> Path:
    """A moving textured 720p scene with a red blob, H.264 in DICOM (cached)."""
    if path.exists():
        return path
    from dicom_io.encode import write_video_dicom

    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (height // 8 + 8, width // 8 + 8, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    yy, xx = np.mgrid[0:height, 0:width]

    def frames():
        for k in range(int(seconds * fps)):
            dx, dy = (k // 2) % 64, (k // 3) % 64
            f = base[dy:dy + height, dx:dx + width].copy()
            r = 40 + 30 * np.sin(k / 20)
            blob = (yy - height / 2) ** 2 + (xx - width / 2 - 200 * np.sin(k / 90)) ** 2 < r * r
            f[blob] = (200, 20, 20)
            yield f

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    write_video_dicom(frames(), tmp, fps=fps, codec="h264", crf=23, preset="ultrafast")
    tmp.rename(path)
    return path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _decode_only(path: str, seconds: float | None) -> dict:
    from dicom_io.video import open_video

    video = open_video(path)
    stop = None if seconds is None else int(seconds * video.fps)
    t0 = time.perf_counter()
    n = sum(1 for _ in video.frames(0, stop))
    wall = time.perf_counter() - t0
    return {"wall": wall, "video_s": n / video.fps, "rss": _rss_mb(), "timings": {"decode": wall}}


def _analyse(path: str, arch: str, checkpoint: str | None, seconds: float | None,
             share: bool, threads: int, device: str = "cpu") -> dict:
    import torch

    from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
    from dicom_io.video import open_video
    from models import build_model, load_checkpoint

    torch.set_num_threads(threads)
    model = build_model(arch)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    else:  # deterministic synthetic weights (the reference recipe, tamed)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models" / "reference"))
        from synth_weights import TAMED, synth_state_dict

        entries = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
                   for k, v in model.state_dict().items()]
        model.load_state_dict(synth_state_dict(entries, **TAMED))
    video = open_video(path)
    if seconds is not None:
        video = _Prefix(video, int(seconds * video.fps))
    analyzer = BleedingAnalyzer.for_model(model, AnalysisOptions(share_clips=share,
                                                                 device=device))
    t0 = time.perf_counter()
    result = analyzer.analyze(video)
    wall = time.perf_counter() - t0
    return {"wall": wall, "video_s": video.frame_count / video.fps, "rss": _rss_mb(),
            "timings": result.timings, "probs": result.probabilities,
            "clips": result.clips_computed, "events": result.index.event_count}


class _Prefix:
    """The first ``n`` frames of a video (same decoding path)."""

    def __init__(self, video, n: int) -> None:
        self._v, self.frame_count, self.fps = video, min(n, video.frame_count), video.fps

    def frames(self, start=0, stop=None, step=1):
        stop = self.frame_count if stop is None else min(stop, self.frame_count)
        return self._v.frames(start, stop, step)


def _run(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30 s video, short segments")
    ap.add_argument("--seconds", type=float, default=600.0, help="video length (default 600)")
    ap.add_argument("--naive-seconds", type=float, default=60.0,
                    help="segment for the shared-vs-naive comparison")
    ap.add_argument("--sf50-seconds", type=float, default=6.0, help="segment for amagi_sf50")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto",
                    help="cpu, cuda, or auto (default: cuda when torch sees one)")
    args = ap.parse_args(argv)
    from amagi_plugin.modelspec import resolve_device

    device = resolve_device(args.device)
    if args.quick:
        args.seconds, args.naive_seconds, args.sf50_seconds = 30.0, 10.0, 2.0
    video = make_video(OUT / f"pipeline_720p_{int(args.seconds)}s.dcm", args.seconds)

    from amagi_plugin.modelspec import DEMO_DIR, demo_manifest

    try:
        manifest = demo_manifest()
        demo = (manifest["arch"], str(DEMO_DIR / manifest["checkpoint"]), "demo model")
    except Exception:  # no bundled demo yet: the same architecture with synthetic weights
        demo = ("amagi_tiny", None, "amagi_tiny (synthetic weights; no demo model bundled)")

    rows = []
    floor = _run(_decode_only, str(video), None)
    rows.append(("decode only (floor)", floor, None))
    def analyse(arch: str, checkpoint: str | None, seconds: float | None, share: bool) -> dict:
        return _run(_analyse, str(video), arch, checkpoint, seconds, share, args.threads, device)

    full = analyse(demo[0], demo[1], None, True)
    rows.append((f"{demo[2]}, shared clips", full, None))
    seg_shared = analyse(demo[0], demo[1], args.naive_seconds, True)
    seg_naive = analyse(demo[0], demo[1], args.naive_seconds, False)
    diff = float(np.max(np.abs(seg_shared["probs"] - seg_naive["probs"])))
    rows.append((f"{demo[0]}, {args.naive_seconds:g} s, naive 3 clips/pred", seg_naive, None))
    rows.append((f"{demo[0]}, {args.naive_seconds:g} s, shared", seg_shared, seg_naive["wall"]))
    sf50 = analyse("amagi_sf50", None, args.sf50_seconds, True)
    rows.append((f"amagi_sf50 (synthetic), {args.sf50_seconds:g} s, shared", sf50, None))

    print(f"\nvideo: {video.name}, 1280x720 H.264, {floor['video_s']:.0f} s; "
          f"{args.threads} torch threads, device {device}")
    hdr = (f"{'case':48} {'video s':>8} {'wall s':>8} {'RTF':>7} {'× real time':>11} "
           f"{'clips':>6} {'speed-up':>9} {'peak RSS MB':>11}")
    print(hdr)
    print("-" * len(hdr))
    for name, r, base in rows:
        rtf = r["wall"] / r["video_s"]
        speed = f"{base / r['wall']:.2f}×" if base else ""
        print(f"{name:48} {r['video_s']:8.1f} {r['wall']:8.1f} {rtf:7.3f} {1 / rtf:11.2f} "
              f"{r.get('clips', ''):>6} {speed:>9} {r['rss']:11.0f}")
    print(f"\nshared vs naive: max |Δ probability| = {diff:.2e} (identical within float32)")
    print("\nstage breakdown (s), full video, demo model:")
    t = full["timings"]
    stages = ["decode", "transforms", "video_network", "segmentation", "post_processing", "total"]
    print("  " + "  ".join(f"{s}={t.get(s, 0.0):.2f}" for s in stages))
    print(f"  decode+transforms run in a thread overlapping the network; floor = "
          f"{floor['wall']:.1f} s, i.e. {floor['wall'] / full['wall']:.2f} of the pipeline wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
