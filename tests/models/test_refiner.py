"""The temporal refiner: its features, its reach, its file, and that it learns what the clip
model cannot see (a video's baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amagi_plugin.evaluation.metrics import auroc
from models.errors import CheckpointError, ModelConfigError, ModelError
from models.refiner import (
    FEATURES,
    RefinerConfig,
    TemporalRefiner,
    load_refiner,
    refiner_features,
    save_refiner,
)
from models.training.refiner import RefinerTrainConfig, train_refiner


def test_features_are_the_logit_and_the_logit_less_its_video_median() -> None:
    p = np.array([0.1, 0.5, 0.9, 0.0, 1.0])
    x = refiner_features(p)
    assert x.shape == (len(FEATURES), 5) and np.isfinite(x).all()
    assert x[0, 1] == pytest.approx(0.0) and x[0, 2] == pytest.approx(np.log(9.0), rel=1e-5)
    assert np.allclose(x[1], x[0] - np.median(x[0]), atol=1e-6)
    with pytest.raises(ValueError):
        refiner_features(np.array([]))


def test_each_output_sees_exactly_its_receptive_field() -> None:
    torch.manual_seed(0)
    cfg = RefinerConfig(width=8, layers=4, dropout=0.0)
    net = TemporalRefiner(cfg).eval()
    x = torch.randn(1, len(FEATURES), 101)
    y = x.clone()
    y[:, :, 50] += 5.0
    changed = (net(x) - net(y)).abs()[0] > 1e-6
    reach = cfg.receptive_field
    assert reach == 15
    assert changed[50 - reach:50 + reach + 1].all()
    assert not changed[:50 - reach].any() and not changed[50 + reach + 1:].any()


def test_refine_at_another_rate_resamples_and_returns_one_value_per_instant() -> None:
    torch.manual_seed(0)
    net = TemporalRefiner(RefinerConfig(width=4, layers=3))
    p = np.linspace(0.2, 0.8, 50)
    at_own = net.refine(p)
    at_5hz = net.refine(p[::2], rate_hz=5.0)
    assert at_own.shape == (50,) and at_5hz.shape == (25,)
    assert ((at_own > 0) & (at_own < 1)).all()
    # the 5 Hz sequence is the 10 Hz one's every other sample, up to interpolation
    assert np.abs(at_5hz - at_own[::2]).max() < 0.05
    assert net.refine(np.array([])).size == 0


def test_config_is_checked() -> None:
    for bad in ({"width": 0}, {"layers": 0}, {"dropout": 1.0}, {"rate_hz": 0.0}):
        with pytest.raises(ModelConfigError):
            RefinerConfig(**bad)


def test_file_round_trip_and_foreign_files_refused(tmp_path) -> None:
    torch.manual_seed(1)
    net = TemporalRefiner(RefinerConfig(width=4, layers=3, rate_hz=5.0)).eval()
    path = save_refiner(net, tmp_path / "r.pth", meta={"trained_on": "test"})
    back = load_refiner(path)
    p = np.random.default_rng(0).uniform(0.1, 0.9, 40)
    assert back.cfg == net.cfg
    assert np.array_equal(back.refine(p), net.refine(p))
    other = torch.nn.Linear(2, 2)
    torch.save({"meta": {"arch": "amagi_tiny"}, "state_dict": other.state_dict()},
               tmp_path / "clip.pth")
    with pytest.raises(CheckpointError, match="not a temporal refiner"):
        load_refiner(tmp_path / "clip.pth")
    torch.save({"meta": {"arch": "temporal_refiner", "refiner": {"width": 4, "layers": 3},
                         "features": ["logit"]}, "state_dict": {}}, tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match="features"):
        load_refiner(tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_refiner(tmp_path / "missing.pth")


def _shifted_videos(rng: np.random.Generator, n: int, length: int = 300):
    """Videos whose baseline differs by up to ±1.5 logits while bleeding raises the logit by
    0.8 within each: the raw probability confounds the two, the refiner need not."""
    out = []
    for _ in range(n):
        labels = np.zeros(length)
        for start in rng.choice(np.arange(10, length - 60, 60), size=2, replace=False):
            labels[start:start + int(rng.integers(20, 50))] = 1
        z = rng.uniform(-1.5, 1.5) + 0.8 * labels + rng.normal(0, 0.3, length)
        out.append((1 / (1 + np.exp(-z)), labels))
    return out


def test_training_learns_the_baseline_the_clip_model_cannot_see() -> None:
    rng = np.random.default_rng(0)
    train, test = _shifted_videos(rng, 24), _shifted_videos(rng, 12)
    torch.set_num_threads(1)
    cfg = RefinerTrainConfig(steps=150, batch=4, window=200, seed=3,
                             architecture=RefinerConfig(width=8, layers=5))
    result = train_refiner(train, cfg)
    assert result.videos == 24 and 0 < result.positive_share < 0.5
    assert result.losses[-1] < result.losses[0]
    labels = np.concatenate([y for _, y in test])
    raw = auroc(labels, np.concatenate([p for p, _ in test]))
    refined = auroc(labels, np.concatenate([result.refiner.refine(p) for p, _ in test]))
    assert raw < 0.8 and refined > raw + 0.1, (raw, refined)
    again = train_refiner(train, cfg)  # one seed, one refiner
    p = test[0][0]
    assert np.array_equal(again.refiner.refine(p), result.refiner.refine(p))


def test_training_refuses_data_it_cannot_learn_from() -> None:
    p = np.full(20, 0.5)
    with pytest.raises(ModelError, match="bleeding and non-bleeding"):
        train_refiner([(p, np.zeros(20))])
    with pytest.raises(ModelError, match="one per probability"):
        train_refiner([(p, np.zeros(19))])
    with pytest.raises(ModelError, match="no video"):
        train_refiner([])
    with pytest.raises(ModelError):
        RefinerTrainConfig(steps=0)
