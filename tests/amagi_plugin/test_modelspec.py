"""One model description (amagi_plugin.modelspec.ModelSpec) for the service, process and
evaluation: the demo manifest's build overrides travel in the spec to every loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from amagi_plugin.config import load_config
from amagi_plugin.evaluation.run import build_analyzer
from amagi_plugin.modelspec import DEMO_DIR, ModelSpec, checkpoint_spec, load_model, resolve_model
from amagi_plugin.pipeline import AnalysisOptions
from dicom_io.results import WeightsKind


def _demo_with_build(tmp_path: Path, build: dict) -> Path:
    """The bundled main model with other ``build`` arguments, without its probe (which fits
    the bundled build only; the tests that need one add their own)."""
    manifest = json.loads((DEMO_DIR / "model.json").read_text())
    manifest.pop("probe", None)
    d = tmp_path / "demo"
    d.mkdir()
    shutil.copy(DEMO_DIR / manifest["checkpoint"], d / manifest["checkpoint"])
    (d / "model.json").write_text(json.dumps({**manifest, "build": build}))
    return d


def test_demo_build_overrides_reach_the_service_and_the_evaluation(tmp_path: Path) -> None:
    demo = _demo_with_build(tmp_path, {"input_size": 96})
    cfg = load_config(environ={}, cwd=tmp_path, overrides={"model.device": "cpu"})
    spec = resolve_model(cfg.model, demo_dir=demo)
    assert spec.build == {"input_size": 96} and spec.weights is WeightsKind.DEMO_SYNTHETIC
    (demo / "model.json").unlink()  # loading needs the spec alone, not the manifest again
    assert load_model(spec).default_cfg.input_size == 96
    analyzer = build_analyzer(spec, AnalysisOptions(device="cpu"))
    assert analyzer.input_size == 96


def test_checkpoint_spec_names_the_weights_by_file(tmp_path: Path) -> None:
    authors = checkpoint_spec("amagi", "amagi_sf50", tmp_path / "split1_SF50.pth", {"a": 1})
    user = checkpoint_spec("mine", "amagi_tiny", tmp_path / "latest.pth")
    assert (authors.weights, authors.version, dict(authors.build)) == (
        WeightsKind.AUTHORS, "split1_SF50", {"a": 1})
    assert (user.weights, user.version, dict(user.build)) == (WeightsKind.USER, "latest", {})
    assert isinstance(user, ModelSpec) and user.label == "mine latest"


def test_a_demo_refiner_reaches_the_analyzer_and_the_doctor(tmp_path: Path,
                                                              monkeypatch) -> None:
    """The bundled manifest's ``refiner`` is resolved into the spec, loaded by every
    analyzer's one loader (runtime.load_analyzer) and checked by the doctor; a missing
    or foreign file is a clear error."""
    import pytest
    import torch

    import amagi_plugin.modelspec as modelspec
    from amagi_plugin.doctor import Status, check_model
    from amagi_plugin.errors import InputError
    from amagi_plugin.runtime import analyzer_from_config
    from models.refiner import RefinerConfig, TemporalRefiner, save_refiner

    demo = _demo_with_build(tmp_path, {})
    manifest = json.loads((demo / "model.json").read_text())
    torch.manual_seed(0)
    save_refiner(TemporalRefiner(RefinerConfig(width=4, layers=2)), demo / "r.pth")
    (demo / "model.json").write_text(json.dumps({**manifest, "refiner": "r.pth"}))
    cfg = load_config(environ={}, cwd=tmp_path, overrides={"model.device": "cpu"})
    spec = resolve_model(cfg.model, demo_dir=demo)
    assert spec.refiner == demo / "r.pth"
    assert build_analyzer(spec, AnalysisOptions(device="cpu")).refiner.cfg.layers == 2
    # the commands' wiring and the doctor resolve the bundled folder: point it here
    monkeypatch.setattr(modelspec.resolve_model, "__defaults__", (demo,))
    analyzer, _ = analyzer_from_config(cfg)
    assert analyzer.refiner is not None and analyzer.refiner.cfg.width == 4
    check = check_model(cfg)
    assert check.status is Status.OK and "refined by r.pth" in check.detail
    torch.save({"meta": {"arch": "amagi_tiny"}, "state_dict": {}}, demo / "r.pth")
    check = check_model(cfg)
    assert check.status is Status.FAIL and "not a temporal refiner" in check.detail
    (demo / "r.pth").unlink()
    with pytest.raises(InputError, match="refiner file not found"):
        resolve_model(cfg.model, demo_dir=demo)


def test_a_demo_probe_reaches_the_analyzer_and_the_doctor(tmp_path: Path,
                                                            monkeypatch) -> None:
    """The bundled manifest's ``probe`` (file, weight, smoothing) is resolved into the spec,
    loaded by runtime.load_analyzer and checked by the doctor, which also catches a probe
    trained at another scale than the model's maps; a malformed entry is a clear error."""
    import pytest
    import torch

    import amagi_plugin.modelspec as modelspec
    from amagi_plugin.doctor import Status, check_model
    from amagi_plugin.errors import InputError
    from amagi_plugin.probing import ProbeUse
    from amagi_plugin.runtime import analyzer_from_config
    from models.errors import CheckpointError
    from models.patchnet import PatchNet, PatchNetConfig, save_patchnet

    demo = _demo_with_build(tmp_path, {})
    manifest = json.loads((demo / "model.json").read_text())
    size = load_model(resolve_model(load_config(environ={}, cwd=tmp_path).model,
                                    demo_dir=demo)).default_cfg.input_size
    torch.manual_seed(0)
    save_patchnet(PatchNet(PatchNetConfig(width=4, short_side=size)), demo / "p.pth")
    (demo / "model.json").write_text(json.dumps(
        {**manifest, "probe": {"file": "p.pth", "weight": 0.25, "smooth_s": 2}}))
    cfg = load_config(environ={}, cwd=tmp_path, overrides={"model.device": "cpu"})
    spec = resolve_model(cfg.model, demo_dir=demo)
    assert (spec.probe, spec.probe_use) == ((demo / "p.pth",), ProbeUse(0.25, 2.0))
    monkeypatch.setattr(modelspec.resolve_model, "__defaults__", (demo,))
    analyzer, _ = analyzer_from_config(cfg)
    assert analyzer.probe is not None and analyzer.probe.cfg.width == 4
    assert analyzer.probe_use == ProbeUse(0.25, 2.0)
    check = check_model(cfg)
    assert check.status is Status.OK and "probed by p.pth" in check.detail
    save_patchnet(PatchNet(PatchNetConfig(width=4, short_side=size + 32)), demo / "p.pth")
    check = check_model(cfg)
    assert check.status is Status.FAIL and f"short side {size + 32} px" in check.detail
    with pytest.raises(InputError, match=f"short side {size + 32} px"):
        analyzer_from_config(cfg)
    (demo / "model.json").write_text(json.dumps({**manifest, "probe": {"file": "p.pth",
                                                                        "weight": -1}}))
    with pytest.raises(InputError, match=r"model.json: probe: probe weight must lie in"):
        resolve_model(cfg.model, demo_dir=demo)
    (demo / "model.json").write_text(json.dumps({**manifest, "probe": "gone.pth"}))
    with pytest.raises(InputError, match="probe file not found"):
        resolve_model(cfg.model, demo_dir=demo)
    # several probes are read as one (their mean probability); each must exist and agree
    save_patchnet(PatchNet(PatchNetConfig(width=4, short_side=size)), demo / "p.pth")
    save_patchnet(PatchNet(PatchNetConfig(width=4, short_side=size)), demo / "q.pth")
    (demo / "model.json").write_text(json.dumps(
        {**manifest, "probe": {"file": ["p.pth", "q.pth"], "weight": 0.25}}))
    analyzer, _ = analyzer_from_config(cfg)
    assert len(analyzer.probe.net.members) == 2
    check = check_model(cfg)
    assert check.status is Status.OK and "probed by p.pth + q.pth" in check.detail
    (demo / "model.json").write_text(json.dumps(
        {**manifest, "probe": {"file": ["p.pth", "gone.pth"]}}))
    with pytest.raises(InputError, match=r"probe file not found: .*gone\.pth"):
        resolve_model(cfg.model, demo_dir=demo)
    save_patchnet(PatchNet(PatchNetConfig(width=4, short_side=size, step_s=0.3)), demo / "q.pth")
    (demo / "model.json").write_text(json.dumps(
        {**manifest, "probe": {"file": ["p.pth", "q.pth"]}}))
    check = check_model(cfg)
    assert check.status is Status.FAIL and "q.pth: a probe of an ensemble" in check.detail
    with pytest.raises(CheckpointError, match=r"q\.pth: a probe of an ensemble .* differ: step_s"):
        analyzer_from_config(cfg)  # a model error: the CLI's bad-input exit
