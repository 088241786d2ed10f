"""Motion-compensated temporal guidance (``FlowSegConfig.align``, ``amagi_tiny_tgea``): the
neighbouring frames are shifted onto the centre one before differencing, so that a camera's
own motion cancels while blood that flows against the view still shows."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models import build_model
from models.errors import ModelConfigError
from models.flowseg import (
    FLOWSEG_TINY,
    FLOWSEG_TINY_ALIGNED,
    FlowSeg,
    align_to,
    estimate_shift,
    translation,
)


def _texture(seed: int = 0, waves: int = 40) -> torch.Tensor:
    """A tissue-like texture as ``waves`` random plane waves (no single dominant edge):
    rows ``(fy, fx, phase, amplitude)``, frequencies up to 0.2 cycles a pixel, per channel."""
    g = torch.Generator().manual_seed(seed)
    f = (torch.rand(3, waves, 2, generator=g) - 0.5) * 0.4
    phase = torch.rand(3, waves, 1, generator=g) * 2 * torch.pi
    amp = torch.rand(3, waves, 1, generator=g) / waves ** 0.5
    return torch.cat([f, phase, amp], dim=-1)


def _view(world: torch.Tensor, dy: float, dx: float, h: int = 64, w: int = 80) -> torch.Tensor:
    """What a camera moved by ``(dy, dx)`` pixels sees of ``world`` (exactly, at any
    sub-pixel shift): ``view(p) = world(p - (dy, dx))``, ``(1, 3, h, w)``."""
    yy, xx = torch.meshgrid(torch.arange(float(h)) - dy, torch.arange(float(w)) - dx,
                            indexing="ij")
    fy, fx, phase, amp = (world[..., i, None, None] for i in range(4))
    arg = 2 * torch.pi * (fy * yy + fx * xx) + phase
    return (amp * torch.cos(arg)).sum(1)[None]


@pytest.mark.parametrize("shift", [(0.0, 0.0), (3.0, -5.0), (2.3, -1.7), (-5.5, 4.2)])
def test_phase_correlation_finds_the_camera_shift(shift: tuple[float, float]) -> None:
    world = _texture()
    ref, mov = _view(world, 0.0, 0.0), _view(world, *shift)
    coarse = estimate_shift(ref.mean(1), mov.mean(1), max_shift=8.0)[0]
    fine = translation(ref.mean(1), mov.mean(1), max_shift=8.0)[0]
    assert torch.allclose(coarse, torch.tensor(shift), atol=1.0), coarse
    assert torch.allclose(fine, torch.tensor(shift), atol=0.05), fine


def test_alignment_cancels_a_pure_camera_motion_to_the_resampling_floor() -> None:
    world = _texture(1)
    ref = _view(world, 0.0, 0.0)
    for shift in [(3.0, -5.0), (2.3, -1.7), (-5.5, 4.2)]:
        mov = _view(world, *shift)
        aligned, covered = align_to(ref, mov, max_shift=8.0)
        before = (mov - ref).abs().mean()
        after = ((aligned - ref) * covered).abs().mean()
        # the best any single translation can do, searched on a 0.05-pixel grid around it
        floor = min(((align_to(ref, mov, 8.0, refinements=0)[0] - ref).abs() * covered).mean(),
                    after)
        assert after < 0.3 * before, (shift, float(after), float(before))
        assert after <= 1.1 * floor + 1e-6
        assert covered.mean() > 0.8 and covered.min() == 0  # the uncovered border is flagged


def test_shifts_beyond_max_shift_are_not_followed() -> None:
    world = _texture(2)
    ref, mov = _view(world, 0.0, 0.0), _view(world, 0.0, 12.0)
    d = estimate_shift(ref.mean(1), mov.mean(1), max_shift=4.0)[0]
    assert d.abs().max() <= 4.0 + 0.5


def test_aligned_changes_keep_flow_and_drop_camera_motion() -> None:
    """The generator's premise at the map's input: a camera pan over still tissue and still
    blood gives large raw differences everywhere; after alignment only the growing blob
    (blood that flows against the view) is left."""
    world = _texture(3)
    k, frames, blob = 5, [], torch.zeros(1, 3, 64, 80)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(80.0), indexing="ij")
    for i in range(k):
        view = _view(world, 0.7 * (i - 2), -1.3 * (i - 2))
        radius = 4.0 + 2.0 * i  # the bleed grows frame by frame, in screen coordinates
        disc = ((yy - 32) ** 2 + (xx - 40) ** 2 < radius ** 2).float()
        frames.append(view + blob + 2.0 * disc * torch.tensor([1.0, -0.5, -0.5])[:, None, None])
    x = torch.cat(frames, dim=1)
    plain, aligned = FlowSeg(FLOWSEG_TINY), FlowSeg(FLOWSEG_TINY_ALIGNED)
    d_plain = plain.changes(x)[:, 3:].abs().mean(1)[0]
    d_aligned = aligned.changes(x)[:, 3:].abs().mean(1)[0]
    far = ((yy - 32) ** 2 + (xx - 40) ** 2 > 16 ** 2) & (xx > 10) & (xx < 70) & (yy > 8) & (yy < 56)
    near = ((yy - 32) ** 2 + (xx - 40) ** 2 > 5 ** 2) & ((yy - 32) ** 2 + (xx - 40) ** 2 < 11 ** 2)
    assert d_aligned[far].mean() < 0.25 * d_plain[far].mean()  # the camera's motion cancels
    assert d_aligned[near].mean() > 5 * d_aligned[far].mean()  # the growth stays
    assert torch.equal(plain.changes(x)[:, :3], aligned.changes(x)[:, :3])  # same centre


def test_aligned_variant_has_the_same_parameters_as_tge() -> None:
    tge, tgea = build_model("amagi_tiny_tge"), build_model("amagi_tiny_tgea")
    assert tgea.backbone.seg_model.cfg.align and not tge.backbone.seg_model.cfg.align
    assert {k: v.shape for k, v in tge.state_dict().items()} == \
        {k: v.shape for k, v in tgea.state_dict().items()}
    tgea.load_state_dict(tge.state_dict())  # a tge segmenter's weights fit (and vice versa)
    out = tgea.eval()(torch.randn(1, 3, 8, 128, 128))
    assert out.shape == (1, 2) and torch.isfinite(out).all()


def test_max_shift_must_be_positive() -> None:
    with pytest.raises(ModelConfigError, match="max_shift"):
        replace(FLOWSEG_TINY_ALIGNED, max_shift=0.0)
