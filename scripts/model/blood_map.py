"""A map of all blood, still and active, from one frame: does its growth tell bleeding apart?

Session 51 (``models/weights/demo/heldout-looks/README.md``) found that the demo's temporal
segmenter, trained on active-bleeding masks, flickers with the cues the probe reads and does
not grow where blood flows, and proposed a map of *all* blood instead: one frame cannot tell
active from still blood (the premise of ``amagi synth``), so such a map is a question of
colour and texture that every renderer answers alike, and blood that spreads makes it grow
while still blood keeps it level (and blood sucked away makes it shrink).

``train`` renders ``amagi synth`` scenes directly (:class:`~amagi_plugin.synth.render.Renderer`
gives each frame's active-bleeding mask and its still-blood mask beside the pixels), passes
each frame through JPEG at its look's quality, brings it to the map's scale as analysis does
(short side to the map's size, normalised as the clips are) and trains a small 2-D U-Net
(MONAI's ``BasicUNet``) on the union of the two masks. ``scripts/model/map_growth.py
--blood-net FILE`` then reads the growth statistics on its maps instead of the temporal
segmenter's.

Run: ``python scripts/model/blood_map.py OUT.pth [--cases 300] [--frames-per-case 48]
[--seed 31] [--domain randomised] [--epochs 4] [--precision bf16] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from amagi_plugin.modelspec import DEMO_DIR
from amagi_plugin.probe_training import load_probe_analyzer
from amagi_plugin.synth.render import Renderer
from amagi_plugin.synth.writer import plan_cases
from models.training.augment import resize_short

#: Render sizes (width, height); each case draws one, so that the map sees blood brought down
#: from finer video as well as at its own scale.
SIZES = ((160, 128), (224, 176), (320, 256), (288, 160))
#: The net's output maps: all blood (active or still), and where the scene is hidden
#: (instruments, lens blood, outside the field stop), so that growth can be read only where
#: nothing covers or uncovers the tissue.
OUTPUTS = ("blood", "hidden")


def blood_net(features: Sequence[int] = (16, 16, 32, 64, 128, 16),
              outputs: int = len(OUTPUTS)) -> torch.nn.Module:
    """The all-blood segmenter: one normalised RGB frame in, a logit map of its size for each
    of :data:`OUTPUTS` out."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=3, out_channels=outputs,
                     features=tuple(features))


def load_blood_net(path: Path) -> tuple[torch.nn.Module, dict]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(state.pop("_meta"))
    net = blood_net(meta["features"], len(meta.get("outputs", ["blood"])))
    net.load_state_dict(state)
    return net.eval(), meta


def blood_maps(net: torch.nn.Module, geometry, frames: dict[int, torch.Tensor],
               which: Sequence[int]) -> dict[int, torch.Tensor]:
    """The net's probabilities ``(outputs, H, W)`` of each frame of ``which`` (frames at
    the map's scale, :meth:`~amagi_plugin.probing.MapGeometry.frame`), in batches of 32."""
    out: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for k in range(0, len(which), 32):
            batch = which[k:k + 32]
            x = torch.stack([geometry.normalise(frames[f]) for f in batch])
            out.update(zip(batch, torch.sigmoid(net(x)), strict=True))
    return out


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def to_map_scale(rgb: np.ndarray, masks: Sequence[np.ndarray], size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(3, h, w)`` 0-255 frame and ``(len(masks), h, w)`` masks with the short side brought
    to ``size`` as analysis brings frames to the map's scale (:func:`resize_short`)."""
    # a copy: a decoded frame may be read-only, which torch would only warn about
    x = resize_short(torch.from_numpy(np.array(rgb)).permute(2, 0, 1), size)
    m = torch.from_numpy(np.stack(masks).astype(np.float32))[None]
    m = F.interpolate(m, size=x.shape[-2:], mode="area")
    return x.clamp(0, 255), (m[0] >= 0.5).float()


def render_samples(n_cases: int, per_case: int, seed: int, domain: str, size: int,
                   log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """``uint8 (N, 3, size, size)`` frames and ``uint8 (N, 2, size, size)`` masks (all
    blood, hidden), a random ``size`` square of each frame at the map's scale."""
    rng = np.random.default_rng(seed)
    xs, ms = [], []
    t0 = time.perf_counter()
    for i in range(n_cases):
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        spec = plan_cases(1, seed * 1000 + i, width=w, height=h, fps=30.0, duration_s=60.0,
                          ranges=domain)[0]
        scene = spec.scene
        renderer = Renderer(scene)
        quality = scene.look.jpeg_quality if scene.look is not None else 90
        for k in sorted(rng.choice(scene.n_frames, size=min(per_case, scene.n_frames),
                                   replace=False)):
            fr = renderer.render(int(k))
            x, m = to_map_scale(_jpeg(fr.rgb, quality),
                                (fr.active | fr.negative, fr.hidden), size)
            oy = int(rng.integers(x.shape[1] - size + 1))
            ox = int(rng.integers(x.shape[2] - size + 1))
            xs.append(x[:, oy:oy + size, ox:ox + size].round().to(torch.uint8))
            ms.append(m[:, oy:oy + size, ox:ox + size].to(torch.uint8))
        if (i + 1) % 25 == 0:
            log(f"rendered {i + 1}/{n_cases} cases, {len(xs)} frames, "
                f"{time.perf_counter() - t0:.0f} s")
    return torch.stack(xs), torch.stack(ms)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    analyzer = load_probe_analyzer(args.model_dir, args.threads)
    geo = analyzer.probe.geometry
    x, m = render_samples(args.cases, args.frames_per_case, args.seed, args.domain, geo.size)
    pos = float(m[:, 0].float().mean())
    print(f"{len(x)} frames, blood in {pos:.3%} of pixels, hidden "
          f"{float(m[:, 1].float().mean()):.3%}")
    mean = torch.tensor(geo.mean).view(1, 3, 1, 1)
    std = torch.tensor(geo.std).view(1, 3, 1, 1)
    net = blood_net(args.features)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(x) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    bf16 = args.precision == "bf16"
    losses = []
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x))
        run = 0.0
        for b in range(len(x) // args.batch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            xb = (x[idx].float() - mean) / std
            mb = m[idx].float()
            if torch.rand(()) < 0.5:
                xb, mb = xb.flip(-1), mb.flip(-1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logit = net(xb)
            logit = logit.float()
            p = torch.sigmoid(logit)
            dice = 1 - (2 * (p * mb).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3))
                                                          + mb.sum((0, 2, 3)) + 1)
            loss = F.binary_cross_entropy_with_logits(logit, mb) + dice.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss.detach())
        losses.append(round(run / max(1, len(x) // args.batch), 4))
        print(f"epoch {epoch + 1}/{args.epochs}: loss {losses[-1]} "
              f"({time.perf_counter() - t0:.0f} s)")
    meta = {"features": list(args.features), "outputs": list(OUTPUTS), "size": geo.size, "mean": list(geo.mean),
            "std": list(geo.std), "cases": args.cases, "frames_per_case": args.frames_per_case,
            "seed": args.seed, "domain": args.domain, "epochs": args.epochs, "losses": losses,
            "blood_share": pos, "train_s": round(time.perf_counter() - t0)}
    state = net.state_dict()
    state["_meta"] = json.dumps(meta)
    torch.save(state, args.out)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--frames-per-case", type=int, default=48)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--domain", default="randomised")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model-dir", type=Path, default=DEMO_DIR)
    args = ap.parse_args(argv)
    meta = train(args)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
