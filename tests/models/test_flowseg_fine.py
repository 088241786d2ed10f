"""FlowSeg's full-resolution head (``FlowSegConfig.fine``, ``amagi_tiny_tgef``): the main map
comes at the input's resolution, starts as the upsampled 1/4 map, and reaches AMAGI's head as
each cell's peak (``cell_peak``), so that a source of one pixel keeps its probability."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.flowseg import FLOWSEG_TINY, FLOWSEG_TINY_FINE, FlowSeg, cell_peak
from models.training.recipe import seg_loss


def test_fine_map_is_full_resolution_and_starts_as_the_upsampled_coarse_one() -> None:
    torch.manual_seed(0)
    fine = FlowSeg(FLOWSEG_TINY_FINE).eval()
    coarse = FlowSeg(FLOWSEG_TINY).eval()
    # the coarse net is the fine one without its head: the same weights everywhere else
    missing, unexpected = coarse.load_state_dict(fine.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("fine_head.") for k in unexpected)
    x = torch.randn(2, FLOWSEG_TINY.in_channels, 64, 80)
    with torch.no_grad():
        aux_f, main_f = fine(x)
        aux_c, main_c = coarse(x)
    assert main_f.shape == (2, 2, 64, 80) and aux_f.shape == main_c.shape == (2, 2, 16, 20)
    torch.testing.assert_close(aux_f, aux_c)
    up = F.interpolate(main_c, size=(64, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(main_f, up)


def test_fine_head_learns_a_one_pixel_source() -> None:
    """A few steps on one image mark a one-pixel target far above each of its 8 neighbours
    (an upsampled 1/4 map cannot: its logits are smooth over 4 pixels)."""
    torch.manual_seed(0)
    net = FlowSeg(FLOWSEG_TINY_FINE)
    x = torch.randn(1, FLOWSEG_TINY.in_channels, 32, 32)
    x[:, 3:, 13, 17] += 4.0  # the pixel "flows": its differences stand out
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, 13, 17] = 1
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        seg_loss(net(x), target, (0.4, 1.0)).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        p = torch.softmax(net(x)[1], dim=1)[0, 1]
    around = p[12:15, 16:19].clone()
    centre = float(around[1, 1])
    around[1, 1] = 0.0
    # the upsampled 1/4 map of the same net, trained the same way, gets about 2 here
    assert centre > 100 * float(around.max())


def test_cell_peak_is_each_cells_largest_probability() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, 12, 16, generator=g) * 3
    out = cell_peak(logits, 4)
    assert out.shape == (2, 2, 3, 4)
    p = torch.softmax(logits, dim=1)[:, 1]
    want = p.reshape(2, 3, 4, 4, 4).amax(dim=(2, 4))  # (n, rows, cols) of each 4x4 cell
    torch.testing.assert_close(torch.softmax(out, dim=1)[:, 1], want)


@pytest.mark.parametrize("name", ["amagi_tiny_tge", "amagi_tiny_tgef"])
def test_amagi_head_gets_quarter_maps(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    clip = torch.randn(1, 3, 8, 128, 128)
    with torch.no_grad():
        _, (aux, main) = model.backbone(clip)
        assert aux.shape == main.shape == (1, 2, 32, 32)
        full = model.backbone.segment(model.backbone.segmentation_input(clip))[1]
    assert full.shape[-1] == (128 if name.endswith("f") else 32)
    if name.endswith("f"):
        torch.testing.assert_close(main, cell_peak(full, 4))
