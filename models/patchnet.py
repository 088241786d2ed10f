"""PatchNet: does a small neighbourhood show bleeding that flows, over 1.4 s?

This project's network, not the authors' (sessions 25-26 of
models/weights/demo/heldout-looks/README.md). In analysis it is the second stage of
:mod:`amagi_plugin.probing`, which chooses where it looks (the segmentation map's peaks).
The demo clip networks miss small sources: every missed development event was a source of
at most 4.3 px radius in a 160 × 128 frame, which a 128-pixel clip network with stride-16
features averages away. PatchNet looks instead at a ``crop`` × ``crop`` neighbourhood at
the frame's own resolution over ``frames`` frames ``step_s`` apart, so a source of a few
pixels fills a good part of its view and its growth from frame to frame is what it sees.

Input: ``(N, frames, 3, crop, crop)`` RGB on the 0-255 scale (no normalisation constants:
the net centres and scales it itself, by fixed constants or, with ``norm='sample'``, by each
neighbourhood's own per-channel statistics, so that a channel's gain and offset, white
balance and exposure, do not reach it). As in :mod:`models.flowseg`, the change between
neighbouring frames is given explicitly (scaled by ``diff_gain``), beside the frames, all on
the channel axis of a 2-D network: six 3 × 3 convolutions (two at stride 2), global
pooling (the mean by default; ``pool`` adds or takes the maximum, session 37), one logit. ``forward`` returns ``(N,)`` logits for "active bleeding in this
neighbourhood".

With ``align``, each frame is first shifted onto the middle one by the neighbourhood's own
translation (:func:`models.flowseg.align_to`, as FlowSeg's ``align``), so that red carried by
the view or an instrument shows no change; pixels a shifted frame has no data for give no
difference. Measured (session 28 of the README above): surer of the bleeding it sees, less
strict on held-out still blood; off by default.

:meth:`PatchNet.dense` runs the same network fully convolutionally over a whole frame stack
``(frames, 3, H, W)``: the pooled window of each position is that of a ``crop`` crop at
that position (seen with the frame's context instead of zero padding at its border), so one
pass scores every ``crop`` × ``crop`` window at stride 4.

:func:`save_patchnet` / :func:`load_patchnet` write and read a probe with its configuration,
which also records where it was trained to look (``candidates`` map peaks of frames whose
short side is ``short_side`` pixels).

:class:`ProbeEnsemble` is several probes of one configuration read as one: its logit is that
of the mean of their probabilities (:func:`load_probe` reads one file as a PatchNet, several
as an ensemble). Measured (models/weights/demo/heldout-looks/README.md): the mean of three
48-case probes found more held-out events at a validation-chosen point than any one of them
(session 28); that of three 144-case probes, whose seeds lie closer together, did not
(session 31).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import read_checkpoint, save_checkpoint
from models.errors import CheckpointError, ModelConfigError
from models.flowseg import align_to

__all__ = ["PatchNet", "PatchNetConfig", "ProbeEnsemble", "ProbeNet", "load_patchnet", "load_probe",
           "save_patchnet"]

ARCH = "patchnet"
#: PatchNetConfig.pool's choices
POOLS = ("avg", "max", "avgmax")
#: PatchNetConfig.norm's choices
NORMS = ("fixed", "sample")
#: PatchNetConfig.norm ``sample``: the least standard deviation (0-255 scale) a channel of a
#: neighbourhood is divided by, so that a flat patch's noise is not blown up
NORM_MIN_STD = 8.0
#: PatchNetConfig.stabilise: the largest translation of the view it looks for, as a share of
#: the frames' short side (16 px at 128)
STABILISE_SHARE = 0.125


@dataclass(frozen=True)
class PatchNetConfig:
    """The probe's geometry: what one sample is, and where it was trained to look."""

    frames: int = 8
    step_s: float = 0.2  # seconds between the frames (the clips' 10 Hz grid, every other)
    crop: int = 32
    width: int = 32
    diff_gain: float = 4.0
    #: the segmentation map's highest local maxima it is run at (training and analysis)
    candidates: int = 8
    #: the scale of its frames: resized so their shorter side has this many pixels
    short_side: int = 128
    #: motion compensation: each frame is first shifted onto the middle one by the
    #: neighbourhood's own translation (:func:`models.flowseg.align_to`), at most
    #: ``max_shift`` px on each axis
    align: bool = False
    max_shift: float = 8.0
    #: view stabilisation: each of a place's frames is read where the view's translation
    #: from the instant's own frame carried the place (the motion most tiles of the frame
    #: agree on, each tile's by :func:`models.flowseg.translation`, at most
    #: :data:`STABILISE_SHARE` of ``short_side`` on each axis;
    #: :func:`amagi_plugin.probing.view_shifts`), so that blood carried by the
    #: view as it sways or pans stands still in the probe's neighbourhood (session 52)
    stabilise: bool = False
    #: how the body's feature map becomes one vector (:data:`POOLS`): ``avg`` its mean;
    #: ``max`` its largest value per channel; ``avgmax`` both side by side, so a source of
    #: a few pixels that fills one or two of its cells is not averaged away (session 37)
    pool: str = "avg"
    #: how a neighbourhood is put on the network's scale (:data:`NORMS`): ``fixed`` the same
    #: constants for all, ``(x − 128) / 64``; ``sample`` each colour channel by the
    #: neighbourhood's own mean and standard deviation over its frames (at least
    #: :data:`NORM_MIN_STD`), so that white balance, exposure and contrast, any gain and
    #: offset of a channel, do not reach the network: only the neighbourhood's pattern and
    #: its change do (session 49)
    norm: str = "fixed"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ModelConfigError(f"PatchNet pool must be one of {', '.join(POOLS)}, "
                                   f"got {self.pool!r}")
        if self.norm not in NORMS:
            raise ModelConfigError(f"PatchNet norm must be one of {', '.join(NORMS)}, "
                                   f"got {self.norm!r}")
        if self.frames < 2 or self.crop < 4 or self.width < 1 or self.candidates < 1:
            raise ModelConfigError(f"PatchNet needs frames >= 2, crop >= 4, width >= 1 and "
                                   f"candidates >= 1, got {self}")
        if not (self.step_s > 0 and self.short_side >= self.crop and self.max_shift > 0):
            raise ModelConfigError(f"PatchNet needs step_s > 0, short_side >= crop and "
                                   f"max_shift > 0, got {self}")


class PatchNet(nn.Module):
    """Small temporal classifier of a neighbourhood (see the module docstring)."""

    #: stride of :meth:`dense`'s score map in input pixels
    STRIDE = 4

    def __init__(self, cfg: PatchNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or PatchNetConfig()
        if cfg.crop % self.STRIDE:
            raise ModelConfigError(f"crop must be a multiple of {self.STRIDE}, got {cfg.crop}")
        w = cfg.width

        def block(i: int, o: int, s: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o),
                                 nn.ReLU(inplace=True))

        channels = 3 * cfg.frames + 3 * (cfg.frames - 1)  # frames and their differences
        self.body = nn.Sequential(block(channels, w, 1), block(w, w, 1),
                                  block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                                  block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1))
        self.fc = nn.Linear(4 * w * (2 if cfg.pool == "avgmax" else 1), 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, frames, 3, H, W)`` on 0-255 → body features ``(N, 4·width, H/4, W/4)``."""
        if x.dim() != 5 or x.shape[1:3] != (self.cfg.frames, 3):
            raise ValueError(f"expected (N, {self.cfg.frames}, 3, H, W), got {tuple(x.shape)}")
        x = self.normalised(x)
        if self.cfg.align:
            x, covered = self.aligned(x)
            d = (x[:, 1:] - x[:, :-1]) * covered[:, 1:] * covered[:, :-1]
        else:
            d = x[:, 1:] - x[:, :-1]
        return self.body(torch.cat([x.flatten(1, 2), self.cfg.diff_gain * d.flatten(1, 2)], 1))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, 3, H, W)`` on 0-255 → on the network's scale, as ``cfg.norm`` says."""
        if self.cfg.norm == "fixed":
            return (x - 128.0) / 64.0
        mean = x.mean((1, 3, 4), keepdim=True)
        std = x.std((1, 3, 4), keepdim=True).clamp_min(NORM_MIN_STD)
        return (x - mean) / std

    def aligned(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, T, 3, H, W)`` → the frames each shifted onto the middle one (the middle one
        as it is) and ``(N, T, 1, H, W)``: 1 where a shifted frame has data."""
        n, t, c, h, w = x.shape
        mid = t // 2
        others = torch.cat([x[:, :mid], x[:, mid + 1:]], 1).reshape(n * (t - 1), c, h, w)
        moved, covered = align_to(x[:, mid].repeat_interleave(t - 1, 0), others,
                                  self.cfg.max_shift)
        moved = moved.reshape(n, t - 1, c, h, w)
        covered = covered.reshape(n, t - 1, 1, h, w)
        one = torch.ones_like(covered[:, :1])
        return (torch.cat([moved[:, :mid], x[:, mid:mid + 1], moved[:, mid:]], 1),
                torch.cat([covered[:, :mid], one, covered[:, mid:]], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, frames, 3, crop, crop)`` → ``(N,)`` logits."""
        z = self.features(x)
        return self.fc(self._pooled(F.adaptive_avg_pool2d, F.adaptive_max_pool2d, z, 1)
                       .flatten(1))[:, 0]

    def _pooled(self, avg, mx, z: torch.Tensor, size: int) -> torch.Tensor:
        """``z`` pooled as :attr:`PatchNetConfig.pool` says with ``avg(z, size)`` /
        ``mx(z, size)`` (channels of both side by side for ``avgmax``)."""
        if self.cfg.pool == "avg":
            return avg(z, size)
        if self.cfg.pool == "max":
            return mx(z, size)
        return torch.cat([avg(z, size), mx(z, size)], 1)

    def dense(self, stack: torch.Tensor) -> torch.Tensor:
        """``(frames, 3, H, W)`` (H, W ≥ crop) → logits ``(H', W')`` of every ``crop``
        window at stride 4: entry ``(i, j)`` is the window whose top-left pixel is
        ``(4i, 4j)``."""
        if self.cfg.align:
            raise ModelConfigError("an aligning probe shifts each window by its own motion: "
                                   "it scores windows one at a time, not densely")
        if self.cfg.norm != "fixed":
            raise ModelConfigError("a probe that normalises each neighbourhood by its own "
                                   "statistics scores windows one at a time, not densely")
        z = self.features(stack[None])
        z = self._pooled(partial(F.avg_pool2d, stride=1), partial(F.max_pool2d, stride=1), z,
                         self.cfg.crop // self.STRIDE)
        return torch.einsum("nchw,c->nhw", z, self.fc.weight[0])[0] + self.fc.bias[0]


def save_patchnet(net: PatchNet, path: str | os.PathLike[str],
                  meta: dict[str, Any] | None = None) -> Path:
    """Write a probe checkpoint: its weights, its :class:`PatchNetConfig` and ``meta``."""
    return save_checkpoint(net, path, meta={**(meta or {}), "arch": ARCH,
                                            "patchnet": asdict(net.cfg)})


def load_patchnet(path: str | os.PathLike[str], device: str = "cpu") -> PatchNet:
    """A probe from :func:`save_patchnet`'s file, in eval mode; a file that is not one is a
    :class:`~models.errors.CheckpointError`."""
    obj = read_checkpoint(path)
    meta = obj.get("meta", {}) if isinstance(obj, dict) else {}
    if meta.get("arch") != ARCH or not isinstance(meta.get("patchnet"), dict):
        raise CheckpointError(f"{path}: not a PatchNet probe checkpoint (meta.arch is "
                              f"{meta.get('arch')!r})")
    known = {f.name for f in fields(PatchNetConfig)}
    unknown = sorted(set(meta["patchnet"]) - known)
    if unknown:
        raise CheckpointError(f"{path}: probe configuration has keys this version does not "
                              f"know: {unknown}")
    try:
        net = PatchNet(PatchNetConfig(**meta["patchnet"]))
        net.load_state_dict(obj["state_dict"])
    except (TypeError, RuntimeError, KeyError, ModelConfigError) as e:
        raise CheckpointError(f"{path}: probe checkpoint does not fit: {e}") from None
    return net.eval().to(device)


def _differing(a: PatchNetConfig, b: PatchNetConfig) -> list[str]:
    """The fields in which two probe configurations differ."""
    return [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]


class ProbeEnsemble(nn.Module):
    """Probes of one :class:`PatchNetConfig` as one: ``forward`` and ``dense`` return the
    logit of the mean of the members' probabilities, so a sigmoid of it is that mean
    (computed in log space: ``log mean σ(z) − log mean σ(−z)``, finite where a member is
    certain)."""

    def __init__(self, members: list[PatchNet]) -> None:
        super().__init__()
        if not members:
            raise ModelConfigError("a probe ensemble needs at least one probe")
        for i, m in enumerate(members):
            if differ := _differing(members[0].cfg, m.cfg):
                raise ModelConfigError(f"the probes of an ensemble must share one "
                                       f"configuration; probe {i}'s differs from probe 0's in "
                                       f"{', '.join(differ)}")
        self.members = nn.ModuleList(members)

    @property
    def cfg(self) -> PatchNetConfig:
        return self.members[0].cfg

    @staticmethod
    def mean_logit(z: torch.Tensor) -> torch.Tensor:
        """Members' logits stacked on axis 0 → the logit of their mean probability."""
        z = z.float()
        return torch.logsumexp(F.logsigmoid(z), 0) - torch.logsumexp(F.logsigmoid(-z), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean_logit(torch.stack([m(x) for m in self.members]))

    def dense(self, stack: torch.Tensor) -> torch.Tensor:
        return self.mean_logit(torch.stack([m.dense(stack) for m in self.members]))


#: What analysis runs as a probe: one network, or several read as one.
ProbeNet = PatchNet | ProbeEnsemble


def load_probe(paths: str | os.PathLike[str] | list[Path], device: str = "cpu"
               ) -> ProbeNet:
    """One probe file as a :class:`PatchNet`, several as a :class:`ProbeEnsemble`; a file
    whose configuration differs from the first's is a :class:`~models.errors.CheckpointError`
    naming it and the fields that differ."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [Path(paths)]
    members = [load_patchnet(p, device) for p in paths]
    if len(members) == 1:
        return members[0]
    for path, m in zip(paths, members, strict=True):
        if differ := _differing(members[0].cfg, m.cfg):
            raise CheckpointError(f"{path}: a probe of an ensemble must share {paths[0]}'s "
                                  f"configuration; these differ: {', '.join(differ)}")
    return ProbeEnsemble(members).eval().to(device)
