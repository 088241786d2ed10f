"""``amagi process INPUT``: analyse one surgical video and write its results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amagi_plugin.cli import config_flag
from amagi_plugin.errors import InputError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "process", parents=parents, help="analyse one video for active bleeding",
        description="Analyse a DICOM video (or a folder of single-frame images, or an MP4/MPEG-TS "
        "file) and write summary.json, predictions.csv, timeline.png and, for DICOM input, the SR, "
        "SEG, key images and KOS under OUTPUT/dicom/.")
    p.add_argument("input", metavar="INPUT", help="DICOM file, folder of DICOM images, or video file")
    p.add_argument("-od", "--output-directory", metavar="DIR",
                   help="where results go (default: RESULTS_DIR/<input name>)")
    m = p.add_argument_group("model")
    config_flag(m, "--model", key="model.name", metavar="NAME")
    config_flag(m, "--checkpoint", key="model.checkpoint", metavar="PATH")
    config_flag(m, "--device", key="model.device", metavar="DEVICE")
    config_flag(m, "--prediction-hz", key="model.prediction_hz", metavar="HZ")
    config_flag(m, "--batch-size", key="model.batch_size", metavar="N")
    config_flag(m, "--bf16", key="model.bf16", action="store_const", const="true")
    config_flag(m, "--decode-workers", key="model.decode_workers", metavar="N")
    config_flag(m, "--fast", key="model.fast", action="store_const", const="true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    from tqdm import tqdm

    from amagi_plugin.process import process_video

    cfg = ctx.config
    src = Path(args.input)
    if not src.is_absolute():
        src = ctx.cwd / src
    if not src.exists():
        raise InputError(f"input not found: {src}")
    source = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else src
    if src.is_dir() and not source:
        raise InputError(f"{src} holds no files")
    out = Path(args.output_directory) if args.output_directory else cfg.results_dir / src.stem
    if not out.is_absolute():
        out = ctx.cwd / out
    from amagi_plugin.runtime import analyzer_from_config

    analyzer, spec = analyzer_from_config(cfg)
    bar = None
    if not args.no_progress:
        bar = tqdm(total=0, unit="clip", desc=src.name[:30], file=ctx.stderr,
                   disable=None if ctx.stderr is sys.stderr else True, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        outcome = process_video(source, out, analyzer, spec, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    doc = outcome.summary
    ctx.print(f"{doc['event_count']} bleeding event(s), {doc['total_bleeding_s']:.1f} s in total, "
              f"in {doc['duration_s']:.1f} s of video ({spec.label})")
    for e in doc["events"]:
        ctx.print(f"  {e['start_s']:8.1f} s – {e['end_s']:8.1f} s  ({e['duration_s']:.1f} s, "
                  f"peak {e['peak_probability']:.2f}, key frame {e['key_frame']})")
    ctx.print(f"results: {out}")
    for ref in outcome.dicom_objects:
        ctx.print(f"  {ref.path.name if ref.path else ref.sop_instance_uid}")
    return 0
