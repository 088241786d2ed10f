"""The one place that turns configuration into an analyzer (amagi_plugin.runtime)."""

from __future__ import annotations

import pytest

from amagi_plugin.config import ConfigError, load_config
from amagi_plugin.runtime import analyzer_from_config


def test_every_analysis_key_reaches_the_analyzer(tmp_path) -> None:
    cfg = load_config(environ={}, cwd=tmp_path, overrides={
        "model.device": "cpu", "model.prediction_hz": "5", "model.batch_size": "3",
        "model.decode_workers": "2", "analysis.threshold": "0.7",
        "analysis.smoothing": "median", "analysis.smoothing_s": "2",
        "analysis.hold_threshold": "0.4"})
    analyzer, spec = analyzer_from_config(cfg)
    o = analyzer.options
    assert (o.device, o.prediction_hz, o.batch_size, o.decode_workers) == ("cpu", 5.0, 3, 2)
    assert (o.threshold, o.smoothing, o.smoothing_s, o.fast) == (0.7, "median", 2.0, False)
    assert o.hold_threshold == 0.4
    assert o.backend == "torch" and analyzer.compiled is None  # openvino: openvino_cases.py
    assert spec.weights == "demo-synthetic" and "not for clinical use" in spec.label


def test_decode_workers_must_be_positive(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model\.decode_workers"):
        load_config(environ={}, cwd=tmp_path, overrides={"model.decode_workers": "0"})


def test_a_cuda_index_the_host_lacks_is_refused(monkeypatch) -> None:
    import torch

    from amagi_plugin.errors import InputError
    from amagi_plugin.modelspec import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0" and resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match=r"'cuda:3' requested but this host has 1 CUDA device$"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_where_it_would_be_emulated_is_refused(tmp_path, monkeypatch, run_cli,
                                                   native: bool) -> None:
    """Emulated bf16 made the demo network 60 times slower than fp32 (a 2-core AVX2 CPU,
    session 38): model.bf16 there is one error line (exit 2) naming the switch that takes
    bf16 only where it is native; where it is native the analyzer runs in bf16."""
    monkeypatch.setattr("amagi_plugin.fastpath.bf16_native", lambda device: native)
    cfg = load_config(environ={}, cwd=tmp_path, overrides={"model.bf16": "true"})
    if native:
        analyzer, _ = analyzer_from_config(cfg)
        assert analyzer.options.bf16 is True
        return
    with pytest.raises(ConfigError, match=r"^model\.bf16: cpu does not compute bfloat16 "
                                          r"natively .* set model\.fast, which"):
        analyzer_from_config(cfg)
    from tests.amagi_plugin.serve_support import make_video

    out = tmp_path / "out"
    r = run_cli("process", str(make_video(tmp_path / "case.dcm")), "--bf16", "-o", str(out))
    assert r.code == 2 and r.stderr.startswith("amagi: error: model.bf16: cpu does not"), r.stderr
    assert not out.exists()


def _demo_copy(tmp_path, point: dict | None):
    """The bundled demo's model.json (its checkpoints and probe linked) with
    ``operating_point``."""
    import json

    from amagi_plugin.modelspec import DEMO_DIR, demo_manifest

    d = tmp_path / "demo"
    d.mkdir()
    manifest = demo_manifest(DEMO_DIR)
    for path in DEMO_DIR.glob("*.pth"):
        (d / path.name).symlink_to(path)
    manifest["operating_point"] = point
    (d / "model.json").write_text(json.dumps(manifest))
    return d


def test_the_models_operating_point_is_used_unless_a_knob_is_set(tmp_path, monkeypatch) -> None:
    import amagi_plugin.modelspec as modelspec

    d = _demo_copy(tmp_path, {"threshold": 0.35, "smoothing": "none", "smoothing_s": 0.0,
                              "chosen_on": "validation cases"})
    original = modelspec.resolve_model
    monkeypatch.setattr(modelspec, "resolve_model", lambda cfg: original(cfg, d))
    plain = load_config(environ={}, cwd=tmp_path, overrides={"model.device": "cpu"})
    analyzer, spec = analyzer_from_config(plain)
    o = analyzer.options
    assert (o.threshold, o.smoothing, o.smoothing_s) == (0.35, "none", 0.0)
    assert spec.operating_point is not None and spec.operating_point.threshold == 0.35
    # a key set by the environment (or a file, or a flag) wins, knob by knob
    env = load_config(environ={"AMAGI_ANALYSIS_THRESHOLD": "0.6"}, cwd=tmp_path,
                      overrides={"model.device": "cpu"})
    o = analyzer_from_config(env)[0].options
    assert (o.threshold, o.smoothing, o.smoothing_s) == (0.6, "none", 0.0)


def test_the_models_hold_is_read_with_its_threshold(tmp_path, monkeypatch) -> None:
    import amagi_plugin.modelspec as modelspec

    d = _demo_copy(tmp_path, {"threshold": 0.8, "smoothing": "morphology", "smoothing_s": 1.0,
                              "hold_threshold": 0.65, "chosen_on": "validation cases"})
    original = modelspec.resolve_model
    monkeypatch.setattr(modelspec, "resolve_model", lambda cfg: original(cfg, d))

    def options(**overrides):
        cfg = load_config(environ={}, cwd=tmp_path,
                          overrides={"model.device": "cpu", **overrides})
        return analyzer_from_config(cfg)[0].options

    o = options()
    assert (o.threshold, o.hold_threshold) == (0.8, 0.65)
    o = options(**{"analysis.threshold": "0.5"})  # the model's hold went with its threshold
    assert (o.threshold, o.hold_threshold) == (0.5, None)
    o = options(**{"analysis.hold_threshold": "0.3"})
    assert (o.threshold, o.hold_threshold) == (0.8, 0.3)
    with pytest.raises(ConfigError, match=r"hold_threshold 0\.9 lies above the threshold 0\.8:"
                       r".*\(analysis\.threshold, analysis\.hold_threshold\)"):
        options(**{"analysis.hold_threshold": "0.9"})


def test_a_malformed_operating_point_is_named_with_its_file(tmp_path) -> None:
    from amagi_plugin.errors import InputError
    from amagi_plugin.modelspec import resolve_model

    d = _demo_copy(tmp_path, {"threshold": 1.5})
    cfg = load_config(environ={}, cwd=tmp_path)
    with pytest.raises(InputError, match=r"model\.json: operating_point: threshold must lie"):
        resolve_model(cfg.model, d)
