"""Service benchmark: receive throughput against DCMTK storescp, and push-to-SR latency.

    .venv/bin/python benchmarks/serve.py           # ~200 MB instance, 60 s video
    .venv/bin/python benchmarks/serve.py --quick   # ~20 MB instance, 10 s video

1. Receive: DCMTK ``storescu -xn`` pushes the same H.264 instance to DCMTK ``storescp`` (the
   baseline) and to our listener (spooled, fsynced and recorded in SQLite before Success);
   best of N, interleaved. Ratio = storescp time / our time (≥ 1: we are as fast).
2. Latency: a video is pushed to ``amagi serve`` (in process, demo model or amagi_tiny) with a
   storescp destination; we time push → SR at the destination and subtract the pipeline's own
   processing time recorded in the case store: the remainder is the service's overhead.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dicom_io.tools import dcmtk_program

HERE = Path(__file__).resolve().parent


def _video_bench():
    spec = importlib.util.spec_from_file_location("bench_video", HERE / "video.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def big_instance(quick: bool) -> Path:
    """A high-bitrate H.264 instance (~20 or ~200 MB) built from cached TS segments."""
    vb = _video_bench()
    seg, frames = vb.segment("h264", quick=True)
    copies = 6 if quick else 59
    path = vb.OUT / f"rss_h264_{copies}.dcm"
    if not path.exists():
        vb.concat_dicom(seg, frames, copies, path)
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _push(port: int, path: Path, aec: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([dcmtk_program("storescu"), "-xn", "-R", "-aec", aec, "127.0.0.1",
                        str(port), str(path)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr.strip()}")
    return time.perf_counter() - t0


def _wait_port(port: int, timeout: float = 20) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def receive_benchmark(path: Path, repeat: int) -> tuple[float, float]:
    from db import open_database
    from db.records import record_instance
    from dicom_io.net.listener import DicomListener

    work = Path(tempfile.mkdtemp(prefix="amagi-bench-"))
    port_d = _free_port()
    dcmtk = subprocess.Popen([dcmtk_program("storescp"), "+xa", "-od", str(work / "dcmtk"),
                              str(port_d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (work / "dcmtk").mkdir()
    database = open_database(f"sqlite:///{work / 'amagi.db'}")

    def on_stored(inst) -> None:
        with database.session(write=True) as s:
            record_instance(s, sop_instance_uid=inst.sop_instance_uid,
                            sop_class_uid=inst.sop_class_uid, transfer_syntax_uid=inst.transfer_syntax,
                            study_instance_uid=inst.study_instance_uid,
                            series_instance_uid=inst.series_instance_uid, size_bytes=inst.size_bytes,
                            spool_path=str(inst.path), calling_ae=inst.calling_ae)

    incoming = work / "spool" / ".incoming"
    incoming.mkdir(parents=True)
    tempfile.tempdir = str(incoming)  # as amagi serve does: receive on the spool's filesystem
    listener = DicomListener("AMAGI", "127.0.0.1", 0, work / "spool", on_stored)
    listener.start()
    try:
        _wait_port(port_d)
        ours, theirs = [], []
        for _ in range(repeat):
            theirs.append(_push(port_d, path, "ANY"))
            ours.append(_push(listener.port, path, "AMAGI"))
        return min(theirs), min(ours)
    finally:
        listener.stop()
        dcmtk.terminate()
        dcmtk.wait()
        database.dispose()
        tempfile.tempdir = None
        shutil.rmtree(work, ignore_errors=True)


def latency_benchmark(seconds: float) -> dict:
    import numpy as np

    from amagi_plugin.config import load_config
    from amagi_plugin.modelspec import demo_manifest
    from amagi_plugin.runtime import analyzer_from_config
    from amagi_plugin.service.app import Service
    from db import open_database
    from dicom_io.encode import write_video_dicom

    work = Path(tempfile.mkdtemp(prefix="amagi-bench-"))
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (300, 360, 3), dtype=np.uint8)
    frames = (np.roll(base, k, axis=1)[:256, :320] for k in range(int(seconds * 30)))
    video = write_video_dicom(frames, work / "video.dcm", fps=30)
    overrides = {"storage.var_dir": str(work / "var"), "listener.port": str(_free_port()),
                 "listener.bind_address": "127.0.0.1", "storage.reserve_mb": "16"}
    try:
        demo_manifest()
        label = "demo model"
    except Exception:
        import torch

        from models import build_model

        torch.manual_seed(0)
        ckpt = work / "amagi_tiny.pth"
        torch.save({"state_dict": build_model("amagi_tiny").state_dict()}, ckpt)
        overrides.update({"model.name": "amagi_tiny", "model.checkpoint": str(ckpt)})
        label = "amagi_tiny (synthetic weights)"
    dest_port = _free_port()
    (work / "pacs").mkdir()
    pacs = subprocess.Popen([dcmtk_program("storescp"), "+xa", "-od", str(work / "pacs"), str(dest_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    overrides["delivery.destinations"] = f"PACS@127.0.0.1:{dest_port}"
    cfg = load_config(environ={}, overrides=overrides, cwd=work)
    analyzer, spec = analyzer_from_config(cfg)
    svc = Service(cfg, analyzer, spec)
    svc.start()
    try:
        _wait_port(dest_port)
        t0 = time.perf_counter()
        _push(svc.port, work / "video.dcm", "AMAGI")
        while not list((work / "pacs").glob("SR*")):
            if time.perf_counter() - t0 > 3600:
                raise RuntimeError("no SR within an hour")
            time.sleep(0.05)
        latency = time.perf_counter() - t0
        database = open_database(cfg.database_url, upgrade=False)
        with database.session() as s:
            from db.schema import AnalysisRun

            run = s.query(AnalysisRun).one()
            processing = float(run.timings["total"])
        database.dispose()
    finally:
        svc.stop()
        pacs.terminate()
        pacs.wait()
        shutil.rmtree(work, ignore_errors=True)
    return {"label": label, "video_s": float(video.NumberOfFrames) / 30, "latency": latency,
            "processing": processing}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    path = big_instance(args.quick)
    size_mb = path.stat().st_size / 1e6
    theirs, ours = receive_benchmark(path, args.repeat)
    lat = latency_benchmark(10.0 if args.quick else 60.0)
    print(f"\nreceive: {size_mb:.0f} MB H.264 instance, storescu -xn, best of {args.repeat}")
    print(f"{'receiver':34} {'seconds':>8} {'MB/s':>8} {'ratio':>7}")
    print("-" * 60)
    print(f"{'DCMTK storescp (baseline)':34} {theirs:8.2f} {size_mb / theirs:8.1f} {1.0:7.2f}")
    print(f"{'amagi listener (spool+fsync+db)':34} {ours:8.2f} {size_mb / ours:8.1f} "
          f"{theirs / ours:7.2f}")
    print(f"\nlatency: {lat['video_s']:.0f} s video, 320x256 H.264, {lat['label']}")
    print(f"{'push → SR delivered':34} {lat['latency']:8.2f} s")
    print(f"{'pipeline processing (recorded)':34} {lat['processing']:8.2f} s")
    print(f"{'service overhead':34} {lat['latency'] - lat['processing']:8.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
