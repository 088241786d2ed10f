"""Whole-video pipeline benchmark: floor, ceiling, real-time factor, shared vs naive clips.

    .venv/bin/python benchmarks/pipeline.py            # 10-minute 720p H.264 video
    .venv/bin/python benchmarks/pipeline.py --quick    # 30 s, for a smoke run
    python3 benchmarks/pipeline.py --device cuda --height 1080 --precision both --out r.json

One table: the decode-only floor, then per model (the demo model, AMAGI-SF50 and
AMAGI-SF152 with synthetic weights in the authors' layout) the whole pipeline (decoding
included) and the model-only ceiling: the network alone on random clips already on the
device, at the analyzer's batch size, turned into the real-time factor it would allow at
the analyzer's clips per video second (measured: clips computed / video seconds of the
pipeline run). "× real time" is video seconds per wall second. On CUDA each analysis is
preceded by a warm-up analysis of the first seconds (cuDNN and kernel set-up stay out of
the timing) and "GPU %" is the mean NVML utilisation sampled every 0.1 s while the case
ran (torch.cuda.utilization, else nvidia-smi); "CPU %" is the process's CPU time over
wall time (100 = one core busy).

Every case runs in a fresh process (peak RSS per case). Ratios are against baselines measured
in the same run: the decode-only floor, and the naive scheme (three fresh clips per
prediction, as the authors' inference) on the same segment. amagi_sf50 (about 110 GFLOP per
clip) and amagi_sf152 (about 194) run on the first ``--sf50-seconds`` and ``--sf152-seconds``
of the video (on a CPU by default 6 s and none). Rows are printed as each case finishes and
``--out`` rewrites its JSON after each case, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
WARMUP_S = 2.0  # video seconds analysed before each timed analysis on CUDA
TARGETS = {"amagi_sf50": 100.0, "amagi_sf152": 60.0}  # × real time, one H200, 1080p30 H.264


def frame_size(height: int) -> tuple[int, int]:
    """16:9 frame size for a height (720 → 1280x720, 1080 → 1920x1080)."""
    return 2 * round(height * 16 / 9 / 2), height


def make_video(path: Path, seconds: float, width: int = 1280, height: int = 720,
               fps: float = 30.0, gop: int | None = None) -> Path:
    """A moving textured scene with a red blob, H.264 in DICOM (cached); ``gop``: frames
    between key frames (x264's default, 250, when ``None``)."""
    if path.exists():
        return path
    from dicom_io.encode import write_video_dicom

    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (height // 8 + 8, width // 8 + 8, 3), dtype=np.uint8)
    base = np.repeat(np.repeat(base, 8, axis=0), 8, axis=1)
    yy = np.arange(height, dtype=np.float64)[:, None]
    xx = np.arange(width, dtype=np.float64)[None, :]

    def frames():
        for k in range(int(seconds * fps)):
            dx, dy = (k // 2) % 64, (k // 3) % 64
            f = base[dy:dy + height, dx:dx + width].copy()
            r = 40 + 30 * np.sin(k / 20)
            cy, cx = height / 2, width / 2 + 200 * np.sin(k / 90)
            # the disc's bounding box only (same pixels as testing the whole frame)
            y0, y1 = max(0, int(cy - r) - 1), min(height, int(cy + r) + 2)
            x0, x1 = max(0, int(cx - r) - 1), min(width, int(cx + r) + 2)
            blob = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2 < r * r
            f[y0:y1, x0:x1][blob] = (200, 20, 20)
            yield f

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    write_video_dicom(frames(), tmp, fps=fps, codec="h264", crf=23, preset="ultrafast",
                      gop=gop)
    tmp.rename(path)
    return path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class GpuSampler:
    """Mean GPU utilisation (%) and peak memory used (MB, whole GPU) over a ``with`` block.

    Samples every ``period`` s in a thread: ``torch.cuda.utilization`` (NVML through
    pynvml), else one ``nvidia-smi --query-gpu`` call per sample. NVML's figure is the share
    of its own sample period (1/6 s to 1 s) in which a kernel ran, so blocks shorter than a
    second are rough. ``util`` is None when nothing could be read.
    """

    def __init__(self, device: str, period: float = 0.1) -> None:
        import torch

        self.period, self.samples = period, []
        self.index = torch.device(device).index or 0
        self._read = None
        if device.startswith("cuda"):
            try:
                torch.cuda.utilization(self.index)
                self._read = self._torch
            except Exception:  # no pynvml: fall back to nvidia-smi
                if shutil.which("nvidia-smi") and self._smi() is not None:
                    self._read = self._smi
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _torch(self) -> tuple[float, float] | None:
        import torch

        try:  # bytes in use on the whole GPU (NVML), torch >= 2.6
            mem = torch.cuda.device_memory_used(self.index) / 2**20
        except Exception:
            mem = float("nan")
        return float(torch.cuda.utilization(self.index)), mem

    def _smi(self) -> tuple[float, float] | None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        gpu = visible[self.index] if self.index < len(visible) and visible[self.index] else str(self.index)
        try:
            out = subprocess.run(["nvidia-smi", "-i", gpu, "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=5, check=True).stdout
            util, mem = (float(v) for v in out.strip().splitlines()[0].split(","))
            return util, mem
        except Exception:
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            s = self._read()
            if s is not None:
                self.samples.append(s)
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def util(self) -> float | None:
        return float(np.mean([u for u, _ in self.samples])) if self.samples else None

    @property
    def mem_mb(self) -> float | None:
        mem = [m for _, m in self.samples if not math.isnan(m)]
        return max(mem) if mem else None


def _decode_only(path: str, seconds: float | None, workers: int = 1) -> dict:
    from dicom_io.video import open_video

    video = open_video(path)
    stop = None if seconds is None else int(seconds * video.fps)
    c0, t0 = _cpu_s(), time.perf_counter()
    n = sum(1 for _ in video.frames(0, stop, workers=workers))
    wall = time.perf_counter() - t0
    return {"wall": wall, "video_s": n / video.fps, "rss": _rss_mb(),
            "cpu_pct": 100 * (_cpu_s() - c0) / wall, "timings": {"decode": wall}}


def _synthetic_weights(model) -> None:
    """Deterministic synthetic weights (the reference recipe, tamed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models" / "reference"))
    from synth_weights import TAMED, synth_state_dict

    entries = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
               for k, v in model.state_dict().items()]
    model.load_state_dict(synth_state_dict(entries, **TAMED))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _ceiling(model, batch: int, device: str, bf16: bool, min_time: float,
             compiled=None) -> dict:
    """The network alone on random clips on ``device``: clips per second, ms per batch.
    ``compiled``: the analyzer's compiled clip network (another backend) runs instead."""
    import contextlib

    import torch

    x = torch.randn(batch, *model.default_cfg.clip_shape, device=device)
    model = model if compiled is None else compiled
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                if bf16 else contextlib.nullcontext())

    def steps(n: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast:
            for _ in range(n):
                model(x)
        _sync(device)
        return time.perf_counter() - t0

    # Warm-up everywhere: the random clips need not have the layout the analysis fed (the fast
    # path's channels-last), and oneDNN/cuDNN set a new kernel up for each new layout.
    steps(3 if device.startswith("cuda") else 1)
    with GpuSampler(device) as gpu:
        c0 = _cpu_s()
        one = steps(1)
        n = max(1, min(200, math.ceil((min_time - one) / one))) if min_time > one else 0
        wall = one + (steps(n) if n else 0.0)
    iters = 1 + n
    return {"clips_per_s": batch * iters / wall, "batch_ms": 1000 * wall / iters, "iters": iters,
            "batch": batch, "gpu_util": gpu.util, "gpu_mem_mb": gpu.mem_mb,
            "cpu_pct": 100 * (_cpu_s() - c0) / wall}


def _analyse(path: str, arch: str, checkpoint: str | None, seconds: float | None,
             share: bool, threads: int, device: str = "cpu", precisions: tuple[str, ...] = ("fp32",),
             batch_size: int = 8, ceiling_s: float | None = None,
             decode_workers: int = 1, probe: tuple[str, Any] | None = None) -> list[dict]:
    """One timed analysis per precision (each after a warm-up on CUDA), then its ceiling.
    ``probe``: a neighbourhood probe's file and its ``ProbeUse`` (the demo model's), analysed
    as ``amagi process`` does."""
    import torch

    from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
    from dicom_io.video import open_video
    from models import build_model, load_checkpoint
    from models.patchnet import load_probe

    torch.set_num_threads(threads)
    model = build_model(arch)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    else:
        _synthetic_weights(model)
    source = open_video(path)
    video = source if seconds is None else _Prefix(source, int(seconds * source.fps))
    cuda = device.startswith("cuda")
    out = []
    for precision in precisions:
        # the speed switch, with parallel decoding (openvino-fast: on OpenVINO)
        fast = precision in ("fast", "openvino-fast")
        # openvino: the exact path with its clip network compiled by OpenVINO (model.backend)
        opts = AnalysisOptions(share_clips=share, device=device, bf16=precision == "bf16",
                               batch_size=batch_size, fast=fast,
                               decode_workers=decode_workers if fast else 1,
                               backend="openvino" if precision.startswith("openvino")
                               else "torch")
        c0 = time.perf_counter()
        analyzer = BleedingAnalyzer.for_model(
            model, opts, probe=None if probe is None else load_probe(probe[0], device),
            probe_use=None if probe is None else probe[1])
        setup_s = time.perf_counter() - c0  # OpenVINO's conversion and compilation
        if cuda:
            analyzer.analyze(_Prefix(source, int(min(WARMUP_S, video.frame_count / video.fps)
                                                 * source.fps)))
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with GpuSampler(device) as gpu:
            c0, t0 = _cpu_s(), time.perf_counter()
            result = analyzer.analyze(video)
            wall = time.perf_counter() - t0
            cpu = 100 * (_cpu_s() - c0) / wall
        r = {"precision": precision, "batch": batch_size, "wall": wall, "setup_s": setup_s,
             "video_s": video.frame_count / video.fps, "rss": _rss_mb(), "cpu_pct": cpu,
             "gpu_util": gpu.util, "gpu_mem_mb": gpu.mem_mb,
             "torch_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
             "timings": result.timings, "probs": result.probabilities,
             "clips": result.clips_computed, "events": result.index.event_count,
             "event_frames": [(e.start_frame, e.end_frame) for e in result.events]}
        if ceiling_s is not None:
            r["ceiling"] = _ceiling(analyzer.model, batch_size, device,
                                    analyzer.options.bf16, ceiling_s, analyzer.compiled)
            r["ceiling"]["clips_per_video_s"] = r["clips"] / r["video_s"]
            r["ceiling"]["x_real_time"] = r["ceiling"]["clips_per_s"] / r["ceiling"]["clips_per_video_s"]
        out.append(r)
    return out


def _agreement_lines(name: str, results: list[dict]) -> list[str]:
    """How far each faster precision's probabilities lie from the first (fp32) run's, and
    whether any event changed (the README's tolerance for the speed switch)."""
    if len(results) < 2:
        return []
    ref = results[0]
    lines = []
    for r in results[1:]:
        dp = float(np.max(np.abs(np.asarray(r["probs"]) - np.asarray(ref["probs"]))))
        same = r["event_frames"] == ref["event_frames"]
        lines.append(f"{name} [{r['precision']}] vs [{ref['precision']}]: max |Δp| = {dp:.4f}; "
                     f"events {'identical' if same else 'CHANGED'} ({len(r['event_frames'])} "
                     f"against {len(ref['event_frames'])})")
    return ["", *lines]


class _Prefix:
    """The first ``n`` frames of a video (same decoding path)."""

    def __init__(self, video, n: int) -> None:
        self._v, self.frame_count, self.fps = video, min(n, video.frame_count), video.fps

    def frames(self, start=0, stop=None, step=1, **kw):
        stop = self.frame_count if stop is None else min(stop, self.frame_count)
        return self._v.frames(start, stop, step, **kw)


def _run(fn, *args):
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _sig(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _fmt(v, spec: str, width: int) -> str:
    return f"{'-' if v is None else format(v, spec):>{width}}"


HEADER = (f"{'case':52} {'video s':>7} {'wall s':>7} {'× real time':>11} {'clips':>9} "
          f"{'speed-up':>8} {'GPU %':>5} {'GPU MB':>7} {'CPU %':>6} {'RSS MB':>7}")


def _row_line(row: dict) -> str:
    return (f"{row['case']:52} {_fmt(row.get('video_s'), '.1f', 7)} "
            f"{_fmt(row.get('wall'), '.2f', 7)} {_fmt(row.get('x_real_time'), '.2f', 11)} "
            f"{row.get('clips_col', ''):>9} {row.get('speedup_col', ''):>8} "
            f"{_fmt(row.get('gpu_util'), '.0f', 5)} {_fmt(row.get('gpu_mem_mb'), '.0f', 7)} "
            f"{_fmt(row.get('cpu_pct'), '.0f', 6)} {_fmt(row.get('rss'), '.0f', 7)}")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if k != "probs"}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _device_info(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30 s video, short segments")
    ap.add_argument("--seconds", type=float, default=600.0, help="video length (default 600)")
    ap.add_argument("--height", type=int, default=720,
                    help="video height, 16:9 (default 720: 1280x720; 1080: 1920x1080)")
    ap.add_argument("--video-dir", type=Path, default=OUT, help="where the test video is cached")
    ap.add_argument("--naive-seconds", type=float, default=60.0,
                    help="segment for the shared-vs-naive comparison (0 skips)")
    ap.add_argument("--sf50-seconds", type=float, default=None,
                    help="segment for amagi_sf50 (default 6 on a CPU, 60 on CUDA; 0 skips)")
    ap.add_argument("--sf152-seconds", type=float, default=None,
                    help="segment for amagi_sf152 (default 0 = skip on a CPU, 60 on CUDA)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fast", "openvino", "openvino-fast",
                                            "both", "all"),
                    default="fp32",
                    help="analysis precision (bf16: autocast, as [model] bf16; fast: the speed "
                         "switch, model.fast, with --decode-workers; openvino: fp32 with the "
                         "clip network on OpenVINO, model.backend; openvino-fast: the speed "
                         "switch on OpenVINO); both: fp32 then bf16 in the same process; all: "
                         "fp32, bf16, fast and, on a CPU, openvino and openvino-fast (the naive "
                         "comparison uses the first)")
    ap.add_argument("--decode-workers", type=int, default=None,
                    help="decoding threads for the second floor row and the fast rows "
                         "(default: 2 on a CPU, 4 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=8,
                    help="clips per inference batch (the analyzer's default 8)")
    ap.add_argument("--ceiling-seconds", type=float, default=None,
                    help="time spent per model-only ceiling (default 2 on CUDA, 3 on a CPU; "
                         "at least one batch); negative skips the ceilings")
    ap.add_argument("--demo-dir", type=Path, action="append", default=None, metavar="DIR",
                    help="a demo model folder to analyse (default: the bundled one); given "
                    "more than once, each runs on the same video and its rows give its speed "
                    "against the first's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto",
                    help="cpu, cuda, or auto (default: cuda when torch sees one)")
    ap.add_argument("--out", type=Path, help="also write the table and raw numbers as JSON")
    args = ap.parse_args(argv)
    # `timeout` stops us with SIGTERM: unwind, so the pool's worker is terminated too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    from amagi_plugin.modelspec import resolve_device

    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    if args.quick:
        args.seconds, args.naive_seconds = 30.0, 10.0
        args.sf50_seconds = args.sf50_seconds if args.sf50_seconds is not None else (10.0 if cuda else 2.0)
    if args.sf50_seconds is None:
        args.sf50_seconds = 60.0 if cuda else 6.0
    if args.sf152_seconds is None:
        args.sf152_seconds = (10.0 if args.quick else 60.0) if cuda else 0.0
    if args.ceiling_seconds is None:
        args.ceiling_seconds = 2.0 if cuda else 3.0
    ceiling_s = None if args.ceiling_seconds < 0 else args.ceiling_seconds
    precisions = {"both": ("fp32", "bf16"),
                  "all": ("fp32", "bf16", "fast") + (() if cuda else ("openvino", "openvino-fast"))
                  }.get(args.precision, (args.precision,))
    if precisions[0].startswith("openvino"):  # the agreement lines compare with fp32 first
        precisions = ("fp32", *precisions)
    from amagi_plugin.fastpath import bf16_native
    if "bf16" in precisions and not bf16_native(device):  # emulated: 60x slower (session 38)
        print(f"no bf16 rows: {device} does not compute bfloat16 natively (amagi refuses "
              "model.bf16 there; the fast rows stay fp32)")
        precisions = tuple(p for p in precisions if p != "bf16") or ("fp32",)
    if args.decode_workers is None:
        args.decode_workers = 4 if cuda else 2
    width, height = frame_size(args.height)

    def segment(s: float) -> float | None:
        return None if s >= args.seconds else s

    t_start = time.perf_counter()
    print(f"== making {width}x{height} H.264 test video, {args.seconds:g} s", flush=True)
    video = make_video(args.video_dir / f"pipeline_{height}p_{int(args.seconds)}s.dcm",
                       args.seconds, width, height)
    made_s = time.perf_counter() - t_start
    print(f"   {video} ({video.stat().st_size / 1e6:.0f} MB) after {made_s:.1f} s", flush=True)

    from amagi_plugin.modelspec import DEMO_DIR, demo_manifest, manifest_probe

    # (arch, checkpoint, label, probe) of each demo model folder: the bundled one by default
    demos: list[tuple[str, str | None, str, tuple[list, Any] | None]] = []
    for folder in args.demo_dir or [DEMO_DIR]:
        try:
            manifest = demo_manifest(folder)
        except Exception:  # no bundled demo yet: the same architecture with synthetic weights
            if args.demo_dir:
                raise
            demos.append(("amagi_tiny", None,
                          "amagi_tiny (synthetic weights; no demo model bundled)", None))
            continue
        label = ("demo model" if not args.demo_dir
                 else f"demo {manifest.get('version', '?')} ({folder.name})")
        probe_paths, probe_use = manifest_probe(manifest, folder)
        demos.append((manifest["arch"], str(folder / manifest["checkpoint"]),
                      f"{label} (with its probe)" if probe_paths else label,
                      (list(probe_paths), probe_use) if probe_paths else None))
    demo = demos[0]

    report = {"args": dict(vars(args)),  # paths written as text (_jsonable)
              "info": _device_info(device), "video": {"path": str(video), "width": width,
                                                      "height": height, "make_s": made_s},
              "rows": [], "errors": []}
    rows: list[dict] = report["rows"]

    def save() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(_jsonable(report), indent=1))
            tmp.replace(args.out)

    def add(row: dict) -> None:
        rows.append(row)
        print(_row_line(row), flush=True)
        save()

    def stopped(*_) -> None:  # `timeout`: keep the finished rows, then unwind (pool ends too)
        report["stopped"] = True
        report["table"] = "\n".join([HEADER, "-" * len(HEADER), *map(_row_line, rows),
                                     f"STOPPED by SIGTERM after "
                                     f"{time.perf_counter() - t_start:.0f} s"])
        save()
        print("\n" + report["table"], flush=True)
        sys.exit(124)

    signal.signal(signal.SIGTERM, stopped)
    print(HEADER, flush=True)
    floor = _run(_decode_only, str(video), None)
    report["video"]["seconds"] = floor["video_s"]
    add({"case": "decode only (floor)", "kind": "floor", **floor,
         "x_real_time": floor["video_s"] / floor["wall"]})
    if args.decode_workers > 1:
        floor_n = _run(_decode_only, str(video), None, args.decode_workers)
        add({"case": f"decode only, {args.decode_workers} threads", "kind": "floor", **floor_n,
             "x_real_time": floor_n["video_s"] / floor_n["wall"],
             "speedup_col": f"{floor['wall'] / floor_n['wall']:.2f}×"})

    def analyse(label: str, arch: str, checkpoint: str | None, seconds: float | None,
                share: bool, precs: tuple[str, ...], ceiling: bool = True,
                probe: tuple[str, Any] | None = None) -> list[dict] | None:
        t0 = time.perf_counter()
        try:
            results = _run(_analyse, str(video), arch, checkpoint, seconds, share, args.threads,
                           device, precs, args.batch_size, ceiling_s if ceiling else None,
                           args.decode_workers, probe)
        except Exception as e:  # keep going: one failing model should not hide the others
            report["errors"].append({"case": label, "error": f"{type(e).__name__}: {e}"})
            print(f"{label}: FAILED {type(e).__name__}: {e}", flush=True)
            save()
            return None
        for r in results:
            prec = f"{r['precision']}, bs {r['batch']}"
            add({"case": f"{label} [{prec}]", "kind": "pipeline", "model": arch,
                 "share": share, "process_s": time.perf_counter() - t0, **r,
                 "x_real_time": r["video_s"] / r["wall"], "clips_col": r["clips"]})
            if "ceiling" in r:
                c = r["ceiling"]
                add({"case": f"  {arch} model-only ceiling [{prec}]", "kind": "ceiling",
                     "model": arch, "precision": r["precision"], **c,
                     "clips_col": f"{_sig(c['clips_per_s'])}/s"})
        return results

    sf = {}  # the models with targets first: a run stopped early has them
    for arch, secs in (("amagi_sf50", args.sf50_seconds), ("amagi_sf152", args.sf152_seconds)):
        if secs > 0:
            sf[arch] = analyse(f"{arch} (synthetic), {min(secs, args.seconds):g} s, pipeline",
                               arch, None, segment(secs), True, precisions)
    full = analyse(f"{demo[2]}, whole pipeline", demo[0], demo[1], None, True, precisions,
                   probe=demo[3])
    others = {}  # further demo folders, on the same video: their speed against the first's
    for other in demos[1:]:
        start = len(rows)
        others[other[2]] = analyse(f"{other[2]}, whole pipeline", other[0], other[1], None,
                                   True, precisions, probe=other[3])
        mine = [r for r in rows[start:] if r["kind"] == "pipeline"]  # one per precision
        for row, theirs in zip(mine, full or [], strict=False):
            row["speedup_col"] = f"{theirs['wall'] / row['wall']:.2f}× 1st"
        save()
    seg_naive = seg_shared = None
    if args.naive_seconds > 0:
        seg_naive = analyse(f"{demo[0]}, {args.naive_seconds:g} s, naive 3 clips/pred", demo[0],
                            demo[1], segment(args.naive_seconds), False, precisions[:1], False)
        seg_shared = analyse(f"{demo[0]}, {args.naive_seconds:g} s, shared", demo[0], demo[1],
                             segment(args.naive_seconds), True, precisions[:1], False)
    diff = None
    if seg_naive and seg_shared:
        diff = float(np.max(np.abs(seg_shared[0]["probs"] - seg_naive[0]["probs"])))
        rows[-1]["speedup_col"] = f"{seg_naive[0]['wall'] / seg_shared[0]['wall']:.2f}×"
        report["shared_vs_naive"] = {"max_abs_diff": diff,
                                     "speedup": seg_naive[0]["wall"] / seg_shared[0]["wall"]}
    report["total_s"] = time.perf_counter() - t_start

    lines = [f"video: {video.name}, {width}x{height} H.264 30 fps, {floor['video_s']:.0f} s "
             f"(made in {made_s:.0f} s); {args.threads} torch threads, device {device}"
             + (f" ({report['info']['gpu']})" if cuda else ""),
             "× real time = video seconds per wall second; ceiling rows: the network alone on "
             "random clips on the device, at the pipeline's clips per video second", HEADER,
             "-" * len(HEADER)]
    lines += [_row_line(r) for r in rows]
    if diff is not None:
        lines.append(f"\nshared vs naive: max |Δ probability| = {diff:.2e} "
                     "(identical within float32)")
    for name, results in [*sf.items(), ("demo model", full), *others.items()]:
        lines += _agreement_lines(name, results or [])
    if full:
        t = full[0]["timings"]
        stages = ["decode", "transforms", "video_network", "probe", "segmentation",
                  "post_processing", "total"]
        lines.append(f"\nstage breakdown (s), full video, demo model [{full[0]['precision']}]:")
        lines.append("  " + "  ".join(f"{s}={t.get(s, 0.0):.2f}" for s in stages))
        lines.append(f"  decode+transforms run in a thread overlapping the network; floor = "
                     f"{floor['wall']:.1f} s, i.e. {floor['wall'] / full[0]['wall']:.2f} of the "
                     "pipeline wall time")
    if cuda and height == 1080:
        lines.append("\ntargets (one H200, 1080p30 H.264, decoding included):")
        for arch, target in TARGETS.items():
            for r in sf.get(arch) or []:
                x = r["video_s"] / r["wall"]
                lines.append(f"  {arch} [{r['precision']}]: {x:.1f}× real time, target "
                             f"≥ {target:g}×: {'MET' if x >= target else 'NOT MET'}")
    for e in report["errors"]:
        lines.append(f"FAILED: {e['case']}: {e['error']}")
    lines.append(f"benchmark wall time {report['total_s']:.0f} s")
    report["table"] = "\n".join(lines)
    save()
    print("\n" + report["table"])
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
