"""Benchmark dicom_io.video: decode throughput vs plain PyAV, and peak RSS vs file size.

Run ``.venv/bin/python benchmarks/video.py`` (``--quick`` for a short run).

1. Throughput: the same MPEG-TS bit stream decoded to RGB ``uint8`` frames (a) by PyAV
   from a plain ``.ts`` file, the baseline, and (b) through ``open_video`` from a DICOM
   Video Endoscopic instance whose single fragment holds that stream. Best of N; the
   figure is the ratio b/a (goal >= 0.9).
2. Memory: a child process opens a DICOM instance of about 200 MB and 2 GB and decodes
   every frame through ``open_video``; its peak RSS (``VmHWM``) should not grow with
   the file size (goal < 500 MB). For reference, the same for ``pydicom.dcmread`` of the
   whole file (what a naive reader does) on the smaller instance.

Inputs are generated once and cached in ``benchmarks/out/``: one noisy high-bitrate
segment per codec is encoded with PyAV, and larger inputs are built by concatenating
that segment byte-wise (MPEG-TS concatenates) into the DICOM fragment.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
MB = 1_000_000


def _noisy_frames(n: int, rows: int, cols: int) -> Iterator[np.ndarray]:
    """Moving gradients plus strong noise: hard to compress, so the bitrate stays high."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:rows, 0:cols]
    for i in range(n):
        base = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, ((x + y) // 2 + i) % 256], -1)
        yield (base // 2 + rng.integers(0, 128, (rows, cols, 3))).astype(np.uint8)


def segment(codec: str, quick: bool) -> tuple[Path, int]:
    """Encode (once) the high-bitrate MPEG-TS segment; return its path and frame count."""
    from dicom_io.encode import encode_video

    rows, cols, n = (256, 320, 30) if quick else (512, 640, 90)
    path = OUT / f"segment_{codec}_{cols}x{rows}_{n}.ts"
    if not path.exists():
        tmp = path.with_suffix(".part.ts")
        encode_video(_noisy_frames(n, rows, cols), tmp, 30.0, codec=codec,
                     bitrate=40_000_000, gop=30)
        tmp.replace(path)
    return path, n


def concat_ts(seg: Path, copies: int, path: Path) -> Path:
    """A plain MPEG-TS file made of ``copies`` byte-wise copies of ``seg``."""
    if not path.exists() or path.stat().st_size != seg.stat().st_size * copies:
        with path.open("wb") as out:
            for _ in range(copies):
                with seg.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
    return path


def concat_dicom(seg: Path, frames_per_seg: int, copies: int, path: Path) -> Path:
    """A DICOM video instance whose one fragment is ``copies`` copies of ``seg`` (PS3.5 §8.2.8).

    The header comes from :func:`dicom_io.encode.wrap_video_as_dicom` on the segment; the
    Pixel Data element is written here so that nothing is held in memory.
    """
    import pydicom

    from dicom_io.encode import wrap_video_as_dicom

    length = seg.stat().st_size * copies
    pad = length % 2
    if path.exists() and path.stat().st_size > length:
        return path
    template = path.with_suffix(".template.dcm")
    wrap_video_as_dicom(seg, template, fps=30.0)
    ds = pydicom.dcmread(template, stop_before_pixels=True)
    template.unlink()
    ds.NumberOfFrames = frames_per_seg * copies
    ds.StopTrim = frames_per_seg * copies
    tmp = path.with_suffix(".part")
    ds.save_as(tmp, enforce_file_format=True)
    with tmp.open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))  # empty Basic Offset Table
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, length + pad))
        for _ in range(copies):
            with seg.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
        out.write(b"\0" * pad)
        out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    tmp.replace(path)
    return path


def decode_pyav(ts: Path, thread_type: str) -> int:
    """Baseline: PyAV straight from the plain file, frames to RGB ndarrays."""
    import av

    n = 0
    with av.open(str(ts)) as c:
        vs = c.streams.video[0]
        vs.thread_type = thread_type
        for frame in c.decode(vs):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def decode_open_video(path: Path, thread_type: str) -> int:
    """Through dicom_io: lazy fragment stream, PyAV, RGB ndarrays."""
    from dicom_io.video import open_video

    return sum(1 for _ in open_video(path, thread_type=thread_type).frames())


def best_of_interleaved(fns, repeat: int) -> list[tuple[float, int]]:
    """Best wall time (s) and frame count of each function, runs interleaved A, B, A, B...

    Interleaving spreads the VM's load swings over both sides of the comparison.
    """
    best = [(float("inf"), 0) for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            n = fn()
            best[k] = (min(best[k][0], time.perf_counter() - t0), n)
    return best


def child_rss(mode: str, path: Path, thread_type: str) -> dict:
    """Run one measurement in a fresh interpreter; return its JSON report."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(path),
           "--threads", thread_type]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(mode: str, path: Path, thread_type: str) -> None:
    t0 = time.perf_counter()
    if mode == "open_video":
        n = decode_open_video(path, thread_type)
    elif mode == "header":
        from dicom_io.video import open_video

        n = open_video(path).frame_count
    elif mode == "dcmread":
        import pydicom

        n = len(pydicom.dcmread(path).PixelData)
    else:
        raise SystemExit(f"unknown child mode {mode!r}")
    print(json.dumps({"mode": mode, "n": n, "seconds": time.perf_counter() - t0,
                      "vmhwm_mb": _vmhwm_mb()}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, fewer repeats")
    ap.add_argument("--repeat", type=int, default=None, help="best-of-N timing (default 5, 2)")
    ap.add_argument("--threads", default="AUTO", help="PyAV thread_type for both sides")
    ap.add_argument("--codecs", default="h264,mpeg2", help="codecs for the throughput rows")
    ap.add_argument("--rss-codec", default="h264", help="codec of the RSS inputs")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # The concatenated segments restart their timestamps, which dicom_io rightly reports
    # once per pass (DICOM timing is used); keep the table readable.
    logging.getLogger("dicom_io").setLevel(logging.ERROR)
    if args.child:
        _child(args.child[0], Path(args.child[1]), args.threads)
        return 0

    OUT.mkdir(exist_ok=True)
    repeat = args.repeat or (2 if args.quick else 5)
    tput_mb, rss_sizes = (5, (20, 200)) if args.quick else (50, (200, 2000))

    print(f"# decode throughput (best of {repeat}, thread_type={args.threads})")
    print(f"{'codec':6} {'input':>9} {'frames':>7} {'PyAV .ts fps':>13} "
          f"{'open_video fps':>15} {'ratio':>6}")
    for codec in args.codecs.split(","):
        seg, n_seg = segment(codec, args.quick)
        copies = max(1, round(tput_mb * MB / seg.stat().st_size))
        ts = concat_ts(seg, copies, OUT / f"tput_{codec}_{copies}.ts")
        dcm = concat_dicom(seg, n_seg, copies, OUT / f"tput_{codec}_{copies}.dcm")
        (t_base, n_base), (t_ours, n_ours) = best_of_interleaved(
            [lambda ts=ts: decode_pyav(ts, args.threads),
             lambda d=dcm: decode_open_video(d, args.threads)], repeat)
        if n_base != n_ours:
            raise SystemExit(f"frame counts differ: PyAV {n_base}, open_video {n_ours}")
        fps_base, fps_ours = n_base / t_base, n_ours / t_ours
        print(f"{codec:6} {ts.stat().st_size / MB:7.0f}MB {n_base:7d} {fps_base:13.1f} "
              f"{fps_ours:15.1f} {fps_ours / fps_base:6.2f}")

    print(f"\n# peak RSS of a child process decoding every frame ({args.rss_codec})")
    print(f"{'reader':22} {'file':>9} {'frames':>7} {'seconds':>8} {'VmHWM MB':>9}")
    seg, n_seg = segment(args.rss_codec, args.quick)
    for size_mb in rss_sizes:
        copies = max(1, round(size_mb * MB / seg.stat().st_size))
        dcm = concat_dicom(seg, n_seg, copies, OUT / f"rss_{args.rss_codec}_{copies}.dcm")
        modes = ["header", "open_video"] + (["dcmread"] if size_mb == rss_sizes[0] else [])
        for mode in modes:
            r = child_rss(mode, dcm, args.threads)
            frames = r["n"] if mode == "open_video" else n_seg * copies
            label = {"header": "open_video (no decode)", "open_video": "open_video + decode",
                     "dcmread": "pydicom.dcmread (ref)"}[mode]
            print(f"{label:22} {dcm.stat().st_size / MB:7.0f}MB {frames:7d} "
                  f"{r['seconds']:8.1f} {r['vmhwm_mb']:9.0f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent))
    raise SystemExit(main())
