"""``amagi explain INPUT --at SECONDS``: Grad-CAM views of the clip at that time."""

from __future__ import annotations

import argparse
from pathlib import Path

from amagi_plugin.cli import config_flag
from amagi_plugin.errors import InputError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain", parents=parents, help="Grad-CAM of the clip at a given time",
        description="Write the authors' Grad-CAM views (an animated GIF and a PNG strip: frames "
        "above, heat map overlays below) for the 8-frame clip centred at --at seconds.")
    p.add_argument("input", metavar="INPUT", help="DICOM video or video file")
    p.add_argument("--at", type=float, required=True, metavar="SECONDS", help="time in the video")
    p.add_argument("--layer", choices=("fast", "fusion"), default="fusion",
                   help="fast pathway's last stage, or AMAGI's fusion layer (default: %(default)s)")
    p.add_argument("-od", "--output-directory", metavar="DIR",
                   help="where the GIF and PNG go (default: RESULTS_DIR/<input name>)")
    m = p.add_argument_group("model")
    config_flag(m, "--model", key="model.name", metavar="NAME")
    config_flag(m, "--checkpoint", key="model.checkpoint", metavar="PATH")
    config_flag(m, "--model-dir", key="model.folder", metavar="DIR")
    config_flag(m, "--device", key="model.device", metavar="DEVICE")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.explain import explain_at
    from amagi_plugin.runtime import analyzer_from_config
    from dicom_io.errors import DicomIOError
    from dicom_io.video import open_video

    src = Path(args.input) if Path(args.input).is_absolute() else ctx.cwd / args.input
    if not src.exists():
        raise InputError(f"input not found: {src}")
    try:
        video = open_video(src)
    except DicomIOError as e:
        raise InputError(str(e)) from e
    analyzer, spec = analyzer_from_config(ctx.config)
    out = Path(args.output_directory) if args.output_directory else ctx.config.results_dir / src.stem
    if not out.is_absolute():
        out = ctx.cwd / out
    stem = out / f"gradcam_{args.layer}_{round(args.at * 1000)}ms"  # no dot: suffixes follow
    exp = explain_at(video, analyzer, args.at, args.layer, stem)
    ctx.print(f"clip frames {exp.frames[0]}-{exp.frames[-1]}: P(active bleeding) = "
              f"{exp.probability:.3f} ({spec.label})")
    ctx.print(f"  {exp.gif}")
    ctx.print(f"  {exp.png}")
    return 0
