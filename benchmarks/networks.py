"""Per-clip forward time and peak memory of AMAGI-SF50, AMAGI-SF152 and the SlowFast baseline.

Usage::

    .venv/bin/python benchmarks/networks.py            # batch 1 and 8, fp32 and bf16, best of 3
    .venv/bin/python benchmarks/networks.py --quick    # batch 1 only, best of 2

Each configuration runs in a fresh subprocess (so peak memory is its own) on the CPU with
2 threads, and on CUDA when a GPU is present. Times are best-of-N per clip under
``torch.inference_mode()``; "x base" is the ratio to ``slowfast_r50_amagi`` (the plain
SlowFast baseline with AMAGI's clip layout) at the same device, precision and batch, measured
in the same run. "3-clip" is one AMAGI prediction as the authors run it (``predict`` on
(1, 3, 3, 8, 224, 224)); the authors' implementation takes about 1.35 s for it on the
project's 2-core machine. Peak memory: CPU, growth of the process's peak RSS during the timed
runs; CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("slowfast_r50_amagi", "amagi_sf50", "amagi_sf152")
BASELINE = "slowfast_r50_amagi"
AUTHORS_3CLIP_S = 1.35


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(model_name: str, device: str, precision: str, batch: int, repeats: int,
           threads: int, predict: bool) -> dict[str, float]:
    """Time one configuration in this process; returns seconds per clip and peak MiB."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name).eval().to(device)
    shape = model.default_cfg.clip_shape
    x = (torch.randn(1, 3, *shape) if predict else torch.randn(batch, *shape)).to(device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    run = model.predict if predict else model
    clips = 3 if predict else batch

    def once() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device, dtype=dtype,
                                                    enabled=dtype is not None):
            run(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    rss0 = _rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    once()  # warm-up (oneDNN/cuDNN kernel selection)
    best = min(once() for _ in range(repeats))
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    return {"s_per_clip": best / clips, "s_total": best, "peak_mib": peak}


def _run_config(args: argparse.Namespace, **cfg: object) -> dict[str, float] | None:
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  ! {cfg}: failed: {tail}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 only, best of 2")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per configuration")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--devices", nargs="+", default=None, choices=("cpu", "cuda"),
                   help="devices to measure (default: cpu, and cuda when there is one)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return 0

    import torch

    repeats = args.repeats or (2 if args.quick else 3)
    batches = (1,) if args.quick else (1, 8)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if "cuda" in devices and not torch.cuda.is_available():
        print("benchmarks/networks.py: --devices cuda asked for, but torch sees no CUDA device",
              file=sys.stderr)
        return 2
    models = [BASELINE, *[m for m in args.models if m != BASELINE]]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} CPU threads, best of {repeats}"
          + (f", GPU {torch.cuda.get_device_name(0)}" if "cuda" in devices else ", no GPU"))
    header = f"{'model':<20} {'device':<6} {'prec':<5} {'batch':>5} {'s/clip':>8} " \
             f"{'x base':>7} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for device in devices:
        threads = args.threads
        for precision in ("fp32", "bf16"):
            for batch in batches:
                base = None
                for m in models:
                    r = _run_config(args, model_name=m, device=device, precision=precision,
                                    batch=batch, repeats=repeats, threads=threads,
                                    predict=False)
                    if r is None:
                        continue
                    if m == BASELINE:
                        base = r["s_per_clip"]
                    ratio = f"{r['s_per_clip'] / base:7.2f}" if base else f"{'-':>7}"
                    print(f"{m:<20} {device:<6} {precision:<5} {batch:>5} "
                          f"{r['s_per_clip']:8.3f} {ratio} {r['peak_mib']:9.0f}", flush=True)
        for precision in ("fp32", "bf16"):
            r = _run_config(args, model_name="amagi_sf50", device=device, precision=precision,
                            batch=1, repeats=repeats, threads=threads, predict=True)
            if r is not None:
                note = f" (authors: {AUTHORS_3CLIP_S:.2f} s)" if device == "cpu" else ""
                print(f"amagi_sf50 3-clip predict, {device} {precision}: {r['s_total']:.3f} s"
                      f" = {r['s_per_clip']:.3f} s/clip{note}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
