"""How strong is the temporal cue of active bleeding in synthetic video, as a model sees it?

For every labelled mask frame ``k`` of each case of an ``amagi synth`` data set (folders
with ``labels.json``, ``masks/img_NNNNN.png`` and ``video.dcm``), the decoded video's change
``|f(k+Δ) − f(k−Δ)|`` (summed over RGB, 0–3) is averaged inside the active-bleeding mask and
in a ring of tissue 3–6 pixels around it. The ring changes only through camera and
instrument motion, so ``inside / ring`` near 1 means that, at this resolution and after
compression, the bleeding changes no more than the tissue around it: a clip model has no
temporal cue there. Prints one table by bleeding form.

Run: ``python scripts/model/temporal_signal.py DATA_DIR [--delta 3] [--cases N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dicom_io.video import open_video


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return torch.nn.functional.max_pool2d(t, 2 * radius + 1, 1, radius)[0, 0].numpy() > 0


def case_rows(case: Path, delta: int) -> list[tuple[str, float, float]]:
    """``(form, change inside the mask, change in the ring)`` per labelled active frame."""
    labels = json.loads((case / "labels.json").read_text())
    events = labels["scene"]["events"]
    masks = {int(p.stem.split("_")[1]) - 1: np.asarray(Image.open(p)) > 0
             for p in sorted((case / "masks").glob("img_*.png"))}
    masks = {k: m for k, m in masks.items() if m.any()}
    wanted = {k + s for k in masks for s in (-delta, delta)}
    frames = {i: rgb.astype(np.float32) / 255.0
              for i, _, rgb in open_video(case / "video.dcm").frames(wanted=wanted)}
    rows = []
    for k, m in masks.items():
        if k - delta not in frames or k + delta not in frames:
            continue
        change = np.abs(frames[k + delta] - frames[k - delta]).sum(-1)
        ring = _dilate(m, 6) & ~_dilate(m, 2)
        active = [e for e in events if e["start_frame"] <= k < e["end_frame"]]
        form = active[0].get("form", "ooze") if active else "?"
        if ring.any():
            rows.append((form, float(change[m].mean()), float(change[ring].mean())))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="an amagi synth output folder")
    p.add_argument("--delta", type=int, default=3,
                   help="frames either side (3: the clip models' frame interval)")
    p.add_argument("--cases", type=int, default=0, help="at most this many cases (0: all)")
    a = p.parse_args(argv)
    cases = sorted(c for c in a.data.iterdir() if (c / "labels.json").is_file())
    if a.cases:
        cases = cases[:a.cases]
    by_form: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for case in cases:
        for form, inside, ring in case_rows(case, a.delta):
            by_form[form].append((inside, ring))
            by_form["all"].append((inside, ring))
    if not by_form:
        print(f"no labelled active-bleeding frames in {a.data}", file=sys.stderr)
        return 1
    print("| form | frames | median inside/ring | share below 1.2 | median inside | median ring |")
    print("|---|---|---|---|---|---|")
    for form in sorted(by_form, key=lambda f: (f == "all", f)):
        pairs = by_form[form]
        ratios = [i / max(r, 1e-4) for i, r in pairs]
        print(f"| {form} | {len(pairs)} | {statistics.median(ratios):.2f} | "
              f"{sum(x < 1.2 for x in ratios) / len(ratios):.0%} | "
              f"{statistics.median(i for i, _ in pairs):.3f} | "
              f"{statistics.median(r for _, r in pairs):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
