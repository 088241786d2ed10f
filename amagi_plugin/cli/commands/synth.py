"""``amagi synth``: generate synthetic surgical-bleeding cases (video, labels, masks, rawframes)."""

from __future__ import annotations

import argparse
import dataclasses
import time

from amagi_plugin.cli.commands import comma_numbers
from amagi_plugin.errors import InputError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 224x224, got {text!r}") from e
    return w, h


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 0.03,0.1, got {text!r}") from e
    return lo, hi


def _int_range(text: str) -> tuple[int, int]:
    lo, hi = _range(text)
    if lo != int(lo) or hi != int(hi):
        raise argparse.ArgumentTypeError(f"expected two integers LOW,HIGH, got {text!r}")
    return int(lo), int(hi)


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "synth", parents=parents, help="generate synthetic surgical-bleeding videos",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate procedural surgical-looking videos with active bleeding events "
        "and hard negatives (old pooled blood, red tissue, residual blood). Each case gets a "
        "folder with the video (DICOM Video Endoscopic H.264 and/or MP4), labels.json "
        "(per-frame labels, event intervals, scene parameters, seed), active-bleeding masks "
        "and the authors' rawframe layout with 'folder total_frames label' lists. "
        "Synthetic data: not patient data.")
    g = p.add_argument_group("dataset")
    g.add_argument("-od", "--output-directory", required=True, metavar="DIR",
                   help="where to write the cases and cases.json")
    g.add_argument("--cases", type=int, default=1, metavar="N", help="number of cases")
    g.add_argument("--seed", type=int, default=0, help="dataset seed (case i uses a seed derived "
                   "from (seed, i))")
    g.add_argument("--only", type=comma_numbers(int), default=None, metavar="I,...",
                   help="write only these cases of the N (0-based indices), each exactly as "
                   "the whole set writes it (e.g. to reproduce one case of a set)")
    g.add_argument("--cases-per-patient", type=int, default=1, metavar="N",
                   help="cases sharing one synthetic patient id (for patient-level splits)")
    g.add_argument("--formats", default="dicom,mp4,rawframes",
                   help="comma-separated subset of dicom, mp4, rawframes")
    g.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    g.add_argument("-j", "--jobs", type=int, default=1, help="worker processes")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    v = p.add_argument_group("video")
    v.add_argument("--duration-s", type=float, default=60.0, metavar="SECONDS",
                   help="length of each video")
    v.add_argument("--size", type=_size, default=(224, 224), metavar="WxH", help="frame size")
    v.add_argument("--fps", type=float, default=10.0, help="frame rate")
    v.add_argument("--mask-every", type=int, default=None, metavar="FRAMES",
                   help="frames between saved masks (default: one per second)")
    v.add_argument("--clip-stride", type=int, default=3, metavar="FRAMES",
                   help="frames between the starts of consecutive clip folders")
    v.add_argument("--jpeg-quality", type=int, default=90, help="rawframe JPEG quality")
    v.add_argument("--frames-from", default="render", metavar="SOURCE",
                   help="rawframes and mask frames: render (the rendered frames, the default) "
                   "or video (decoded from the case's H.264 video, what an analysis sees; the "
                   "video is encoded even without --formats mp4)")
    s = p.add_argument_group("scene ranges (override the domain preset)")
    s.add_argument("--domain", default="train",
                   help="preset of scene ranges: train, randomised (domain-randomised looks, "
                   "still look-alikes of active blood), shifted or heldout (looks, field stops "
                   "and a bleeding form outside training), static (bleeding-free, still blood)")
    s.add_argument("--palettes", metavar="NAMES",
                   help="comma-separated palette families: pink, red, yellow, pale, dark")
    s.add_argument("--event-size", type=_range, metavar="LOW,HIGH",
                   help="max pool radius as a fraction of the shorter view side")
    s.add_argument("--event-duration-s", type=_range, metavar="LOW,HIGH",
                   help="event durations in seconds")
    s.add_argument("--events-per-minute", type=_range, metavar="LOW,HIGH")
    s.add_argument("--camera-speed", type=_range, metavar="LOW,HIGH",
                   help="camera motion strength (1 = brisk)")
    s.add_argument("--instruments", type=_int_range, metavar="LOW,HIGH")
    s.add_argument("--pools", type=_int_range, metavar="LOW,HIGH",
                   help="static pooled-blood hard negatives per case")
    s.add_argument("--fresh-pool-probability", type=float, metavar="P",
                   dest="fresh_looking_pool_probability",
                   help="chance that a static pool looks like fresh blood (the hardest "
                   "negative: only its stillness tells it from active bleeding)")
    s.add_argument("--smoke-per-minute", type=_range, metavar="LOW,HIGH")
    s.add_argument("--flow-textures", metavar="NAMES",
                   help="comma-separated blood textures each case draws one of: waves "
                   "(sinusoidal ripples, the presets' own) or advected (an irregular texture "
                   "carried with the flow); every blood of a case alike")
    s.add_argument("--pulse-free", type=float, metavar="P", dest="pulse_free_probability",
                   help="chance that a blood other than a spurt has no heartbeat (its pool "
                   "neither swells nor brightens with the pulse), active and still alike")
    s.add_argument("--still-texture", type=float, metavar="P",
                   dest="still_texture_probability",
                   help="chance that a blood's surface texture does not travel with the flow "
                   "(ripples and glints stay put), active and still alike")
    s.add_argument("--texture-depth", type=_range, metavar="LOW,HIGH",
                   help="range of each blood's texture contrast (1: the presets'; below 0.5 "
                   "no glints), active and still alike")
    s.add_argument("--wobble", type=_range, metavar="LOW,HIGH",
                   help="range of each case's breathing sway, a share of the short side "
                   "(0.02: 2.6 px at 128): the view swings back and forth at 0.15-1.2 Hz, "
                   "still blood with it (default: none)")
    f = p.add_argument_group(
        "per-case video format (opt-in: --size and --fps become base values)")
    f.add_argument("--vary-format", action="store_true",
                   help="draw each case's frame rate from 25/30/50/60 fps, its frame area "
                   "from 0.75-1.5 x that of --size (linear) and its aspect from 1-16/9; "
                   "labels, events and masks follow each case's own rate and size")
    f.add_argument("--frame-rates", metavar="FPS,...",
                   help="frame rates to draw from (implies --vary-format)")
    f.add_argument("--frame-scale", type=_range, metavar="LOW,HIGH",
                   help="linear scale of the --size frame area (implies --vary-format)")
    f.add_argument("--aspect", type=_range, metavar="LOW,HIGH",
                   help="width/height range (implies --vary-format)")
    p.set_defaults(handler=run)


def _ranges(args: argparse.Namespace):
    from amagi_plugin.synth.scene import DOMAINS, VideoFormatRanges

    if args.domain not in DOMAINS:
        raise InputError(f"unknown --domain {args.domain!r}; choose one of {', '.join(DOMAINS)}")
    overrides = {name: getattr(args, name) for name in
                 ("event_size", "event_duration_s", "events_per_minute", "camera_speed",
                  "instruments", "pools", "smoke_per_minute", "fresh_looking_pool_probability",
                  "pulse_free_probability", "still_texture_probability", "texture_depth",
                  "wobble")
                 if getattr(args, name) is not None}
    for name in ("palettes", "flow_textures"):
        if getattr(args, name):
            overrides[name] = tuple(x.strip() for x in getattr(args, name).split(",")
                                    if x.strip())
    fmt = {}
    if args.frame_rates:
        try:
            fmt["frame_rates"] = tuple(float(x) for x in args.frame_rates.split(",") if x.strip())
        except ValueError as e:
            raise InputError(f"--frame-rates expects numbers such as 25,30, got "
                             f"{args.frame_rates!r}") from e
    if args.frame_scale:
        fmt["scale"] = args.frame_scale
    if args.aspect:
        fmt["aspect"] = args.aspect
    if args.vary_format or fmt:
        overrides["video_format"] = VideoFormatRanges(**fmt)
    if not overrides:
        return args.domain
    return dataclasses.replace(DOMAINS[args.domain], **overrides)


def run(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.synth import OutputOptions, generate_dataset

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    options = OutputOptions(formats=formats, mask_every=args.mask_every,
                            clip_stride=args.clip_stride, jpeg_quality=args.jpeg_quality,
                            frames_from=args.frames_from, overwrite=args.overwrite)
    root = ctx.cwd / args.output_directory
    width, height = args.size
    t0 = time.perf_counter()
    index = generate_dataset(root, args.cases, args.seed, width=width, height=height,
                             fps=args.fps, duration_s=args.duration_s, ranges=_ranges(args),
                             cases_per_patient=args.cases_per_patient, options=options,
                             only=args.only, jobs=args.jobs, progress=None if args.no_progress else ctx.stderr)
    elapsed = time.perf_counter() - t0
    written = args.cases if args.only is None else len(set(args.only))
    ctx.print(f"wrote {written} synthetic case(s) to {root} in {elapsed:.1f} s; "
              f"index: {index}")
    return 0
