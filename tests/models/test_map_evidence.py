"""The map's evidence in AMAGI's head (``AmagiHead(map_evidence=True)``, ``amagi_tiny_tge``):
what it measures, that it starts as the authors' head, that it reaches the decision, and
pathway dropout in training."""

from __future__ import annotations

import pytest
import torch

from models import build_model, load_checkpoint
from models.amagi import EVIDENCE, AmagiHead
from models.errors import ModelConfigError


def _logits(bleeding: torch.Tensor) -> torch.Tensor:
    """Main segmentation logits (N, 2, h, w) whose bleeding probability is ``bleeding``."""
    p = bleeding.clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def test_evidence_is_the_peak_and_the_root_of_the_marked_area() -> None:
    p = torch.zeros(2, 16, 16)
    p[0, 4:8, 4:8] = 0.9  # a 4x4 bleed: 16 of 256 pixels, its 3x3 mean inside is 0.9
    p[1, 10, 10] = 0.9  # one hot pixel: marked, but its 3x3 mean is 0.1
    ev = AmagiHead.map_evidence([torch.zeros(2, 2, 16, 16), _logits(p)])
    assert EVIDENCE == ("peak", "sqrt_area") and ev.shape == (2, 2)
    assert ev[0].tolist() == pytest.approx([0.9, (16 / 256) ** 0.5], abs=1e-4)
    assert ev[1].tolist() == pytest.approx([0.1, (1 / 256) ** 0.5], abs=1e-4)


def test_evidence_head_starts_as_the_authors_head_and_keeps_their_keys() -> None:
    torch.manual_seed(0)
    tge = build_model("amagi_tiny_tge").eval()
    tg = build_model("amagi_tiny_tg").eval()
    extra = set(tge.state_dict()) - set(tg.state_dict())
    assert extra == {f"cls_head.{k}" for k in (
        "fc_evidence.weight", "fc_evidence.bias", "evidence_norm.weight", "evidence_norm.bias",
        "evidence_norm.running_mean", "evidence_norm.running_var",
        "evidence_norm.num_batches_tracked")}
    tg.load_state_dict({k: v for k, v in tge.state_dict().items() if k not in extra})
    x = torch.randn(2, 3, 8, 128, 128)
    with torch.inference_mode():  # zero-initialised evidence adds nothing; the pathway
        # logits weigh what pathway dropout left them in training
        torch.testing.assert_close(tge(x), (1 - tge.cls_head.pathway_dropout) * tg(x))


def test_the_map_evidence_reaches_the_decision(tmp_path) -> None:
    torch.manual_seed(1)
    head = AmagiHead(16, 8, 4, 8, feature_size=4, seg_size=16, map_evidence=True).eval()
    with torch.no_grad():
        head.fc_evidence.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    pathways = (torch.randn(1, 16, 4, 4, 4).repeat(2, 1, 1, 1, 1),
                torch.randn(1, 8, 8, 4, 4).repeat(2, 1, 1, 1, 1))
    p = torch.full((2, 16, 16), 0.01)
    p[1, 4:10, 4:10] = 0.95  # the second clip's map marks a bleed; pathways are identical
    seg = [torch.zeros(2, 2, 16, 16), _logits(p)]
    with torch.inference_mode():
        probs = torch.softmax(head((pathways, seg)), dim=1)[:, 1]
    assert probs[1] > probs[0] + 0.2
    # saved and loaded with the model: the evidence weights are part of the checkpoint
    model = build_model("amagi_tiny_tge")
    with torch.no_grad():
        model.cls_head.fc_evidence.bias.fill_(0.5)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "m.pth")
    again = build_model("amagi_tiny_tge")
    assert load_checkpoint(again, tmp_path / "m.pth").ok
    assert torch.equal(again.cls_head.fc_evidence.bias, torch.full((2,), 0.5))


def test_pathway_dropout_leaves_the_evidence_alone_on_dropped_samples() -> None:
    torch.manual_seed(2)
    head = AmagiHead(16, 8, 4, 8, feature_size=4, seg_size=16, map_evidence=True,
                     pathway_dropout=0.5).train()
    with torch.no_grad():
        head.fc_evidence.weight.normal_()
        head.fc_evidence.bias.normal_()
    n = 64
    feats = ((torch.randn(n, 16, 4, 4, 4), torch.randn(n, 8, 8, 4, 4)),
             [torch.randn(n, 2, 16, 16), torch.randn(n, 2, 16, 16)])
    out = head(feats)
    evidence_only = head.fc_evidence(head.evidence_norm(head.map_evidence(feats[1])))
    dropped = torch.isclose(out, evidence_only, atol=1e-6).all(dim=1)
    assert 16 < int(dropped.sum()) < 48  # about half of the samples


def _pathway_and_evidence_logits(head: AmagiHead, feats) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of an evaluation-mode head's logits, computed apart."""
    with torch.inference_mode():
        evidence = head.fc_evidence(head.evidence_norm(head.map_evidence(feats[1])))
        plain = AmagiHead(16, 8, 4, 8, feature_size=4, seg_size=16).eval()
        plain.load_state_dict({k: v for k, v in head.state_dict().items()
                               if "evidence" not in k})
        return plain(feats), evidence


@pytest.mark.parametrize("p", [0.5, 0.9, 1.0])
def test_in_evaluation_the_pathway_logits_weigh_what_training_left_them(p: float) -> None:
    torch.manual_seed(3)
    head = AmagiHead(16, 8, 4, 8, feature_size=4, seg_size=16, map_evidence=True,
                     pathway_dropout=p)
    with torch.no_grad():
        head.fc_evidence.weight.normal_()
        head.fc_evidence.bias.normal_()
    head.eval()
    feats = ((torch.randn(4, 16, 4, 4, 4), torch.randn(4, 8, 8, 4, 4)),
             [torch.randn(4, 2, 16, 16), torch.randn(4, 2, 16, 16)])
    pathways, evidence = _pathway_and_evidence_logits(head, feats)
    assert pathways.abs().min() > 1e-3  # the pathways do say something
    with torch.inference_mode():
        out = head(feats)
    torch.testing.assert_close(out, (1 - p) * pathways + evidence)
    if p == 1.0:  # the evidence alone decides
        torch.testing.assert_close(out, evidence)


def test_pathway_dropout_needs_the_evidence() -> None:
    with pytest.raises(ModelConfigError, match="pathway_dropout needs map_evidence"):
        AmagiHead(16, 8, 4, 8, feature_size=4, seg_size=16, pathway_dropout=0.5)
    for bad in (-0.1, 1.5):
        with pytest.raises(ModelConfigError, match=r"pathway_dropout must lie in \[0, 1\]"):
            AmagiHead(16, 8, 4, 8, feature_size=4, seg_size=16, map_evidence=True,
                      pathway_dropout=bad)
