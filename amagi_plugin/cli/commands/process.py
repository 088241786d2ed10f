"""``amagi process INPUT``: analyse one surgical video and write its results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amagi_plugin.cli import config_flag
from amagi_plugin.cli.webargs import add_web_options, web_options
from amagi_plugin.errors import InputError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "process", parents=parents, help="analyse one video for active bleeding",
        description="Analyse a DICOM video (or a folder of single-frame images, or an MP4/MPEG-TS "
        "file) and write summary.json, predictions.csv, timeline.png and, for DICOM input, the SR, "
        "SEG, key images and KOS under OUTPUT/dicom/. INPUT may also be a study on a DICOMweb "
        "server, dicomweb+https://HOST/dicom-web/studies/STUDY_UID[/series/SERIES_UID]: its video "
        "instances are found by QIDO-RS, retrieved by WADO-RS and each analysed into "
        "OUTPUT/<SOPInstanceUID>/.")
    p.add_argument("input", metavar="INPUT",
                   help="DICOM file, folder of DICOM images, video file, or dicomweb+http(s):// "
                   "study URL")
    p.add_argument("-od", "--output-directory", metavar="DIR",
                   help="where results go (default: RESULTS_DIR/<input name>)")
    m = p.add_argument_group("model")
    config_flag(m, "--model", key="model.name", metavar="NAME")
    config_flag(m, "--checkpoint", key="model.checkpoint", metavar="PATH")
    config_flag(m, "--model-dir", key="model.folder", metavar="DIR")
    config_flag(m, "--device", key="model.device", metavar="DEVICE")
    config_flag(m, "--prediction-hz", key="model.prediction_hz", metavar="HZ")
    config_flag(m, "--batch-size", key="model.batch_size", metavar="N")
    config_flag(m, "--bf16", key="model.bf16", action="store_const", const="true")
    config_flag(m, "--decode-workers", key="model.decode_workers", metavar="N")
    config_flag(m, "--fast", key="model.fast", action="store_const", const="true")
    config_flag(m, "--backend", key="model.backend", metavar="torch|openvino")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_web_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.webin import SCHEME

    if args.input.lower().startswith(SCHEME):
        return _run_dicomweb(args, ctx)
    cfg = ctx.config
    src = Path(args.input)
    if not src.is_absolute():
        src = ctx.cwd / src
    if not src.exists():
        raise InputError(f"input not found: {src}")
    source = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else src
    if src.is_dir() and not source:
        raise InputError(f"{src} holds no files")
    out = _output(args, ctx, cfg.results_dir / src.stem)
    from amagi_plugin.runtime import analyzer_from_config

    analyzer, spec = analyzer_from_config(cfg)
    _analyse(source, src.name, out, analyzer, spec, args, ctx)
    return 0


def _output(args: argparse.Namespace, ctx, default: Path) -> Path:
    out = Path(args.output_directory) if args.output_directory else default
    return out if out.is_absolute() else ctx.cwd / out


def _run_dicomweb(args: argparse.Namespace, ctx) -> int:
    """A study (or series) on a DICOMweb server: every video instance, one after the other."""
    import tempfile

    from amagi_plugin.runtime import analyzer_from_config
    from amagi_plugin.webin import fetch_videos, parse_study_url, web_source

    cfg = ctx.config
    base, study, series = parse_study_url(args.input)
    source = web_source(base, web_options(args), ctx.environ)  # the secret before the model
    out = _output(args, ctx, cfg.results_dir / study)
    analyzer, spec = analyzer_from_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dicomweb-", dir=out) as tmp:
        files = fetch_videos(source, study, series, Path(tmp))
        ctx.print(f"{len(files)} video instance(s) retrieved from {base} (study {study})")
        for path in files:
            _analyse(path, path.stem, out / path.stem, analyzer, spec, args, ctx)
    return 0


def _analyse(source, name: str, out: Path, analyzer, spec, args: argparse.Namespace, ctx) -> None:
    from tqdm import tqdm

    from amagi_plugin.process import process_video

    bar = None
    if not args.no_progress:
        bar = tqdm(total=0, unit="clip", desc=name[:30], file=ctx.stderr,
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
