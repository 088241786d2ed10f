"""The demo build with the neighbourhood probe (``evidence-probe``, the shipped recipe) at
minute scale. Its own file so that the suite's workers run it beside the plain build's test
(``--dist loadfile`` keeps a file's tests on one worker)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_probe_build_trains_the_probe_and_every_analysis_reads_it(tmp_path: Path) -> None:
    """``make demo-model RECIPE=evidence-probe`` at minute scale, with two probe seeds: the
    probes are trained at the segmenter's map peaks (and at every peak of the frames after
    each bleeding's end, as negatives) with their own seeds, named in
    model.json with their weight, read as one (their mean probability), calibrated and
    evaluated with (the operating point is the fused probability's), described in the
    README; an earlier build's weights that it does not name are removed from the folder;
    a rerun redoes nothing. A second build given the folder's networks (``networks_from``)
    trains nothing, reads them at its own probe weight, calibrates and evaluates again, and
    records where they came from. Only the first held-out set is evaluated: the bleeding-free and
    shifted sets are the plain build's test's (they cost this test a minute).

    The build first stops once its segmenter and clip networks are trained (``--stop-after
    clip``, as on a lent GPU: no probe cases made), is resumed until its probes are trained
    too (``--stop-after trained``), and its work directory moves without its data (as
    ``trained-*.tar`` bring it back from the GPU); resumed there, it trains nothing and makes
    no training data again, but makes the validation and held-out sets and finishes."""
    import shutil

    from amagi_plugin.demo_model import PROBE_FILE, DemoBuildError, DemoConfig, build_demo
    from models import build_model
    from models.checkpoint import read_checkpoint
    from models.patchnet import ProbeEnsemble, load_probe

    cfg = dataclasses.replace(DemoConfig.recipe("evidence-probe"), probe_seeds=3,
                              probe_view_negatives=0.5, probe_hinged_negatives=0.25,
                              probe_lookalike_neg=1,
                              probe_after_end_s=(0.5, 1.0), probe_frames=6,
                              probe_pool="avgmax", probe_stabilise=True, probe_smooth_q=0.9,
                              static_cases=0, shifted_cases=0).quick()
    assert (cfg.probe_epochs, cfg.probe_extra_cases, cfg.probe_seeds) == (1, 1, 2)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "probe_demo_seed99.pth").write_bytes(b"an earlier build's probe")
    (dest / "mine.pth").write_bytes(b"a user's own file")
    clip = build_demo(tmp_path / "work", cfg, dest, stop_after="clip")
    assert clip["stopped_after"] == "clip"
    assert set(clip["seconds"]) == {"synth", "train_seg", "train_clip_models", "total"}
    assert [p.name for p in (tmp_path / "work" / "data").iterdir()] == ["train"]
    assert not list((tmp_path / "work").glob("*.pth"))  # no probe trained
    assert {p.name for p in dest.iterdir()} == {"probe_demo_seed99.pth", "mine.pth"}
    stopped = build_demo(tmp_path / "work", cfg, dest, stop_after="trained")
    assert {k: stopped["seconds"][k] for k in ("train_seg", "train_clip_models")} == {
        k: clip["seconds"][k] for k in ("train_seg", "train_clip_models")}  # not trained again
    assert stopped["stopped_after"] == "trained"
    assert set(stopped["seconds"]) == {"synth", "train_seg", "train_clip_models", "probe",
                                       "total"}
    assert {p.name for p in dest.iterdir()} == {"probe_demo_seed99.pth", "mine.pth"}
    assert sorted(p.name for p in (tmp_path / "work" / "data").iterdir()) == [
        "probe-extra", "train"]  # no validation or held-out set made yet
    work = tmp_path / "moved"  # file times kept (copy2): the resume reads them
    shutil.copytree(tmp_path / "work", work, ignore=shutil.ignore_patterns("data"))
    training = build_demo(work, cfg, dest)
    assert sorted(p.name for p in (work / "data").iterdir()) == ["heldout", "validation",
                                                                 "validation-static"]
    assert {k: training["seconds"][k] for k in stopped["seconds"] if k != "total"} == {
        k: v for k, v in stopped["seconds"].items() if k != "total"}  # trained there, not here
    assert training["seconds"]["synth_eval"] > 0 and training["seconds"]["evaluate"] > 0
    assert not (dest / "probe_demo_seed99.pth").exists()  # gone: nothing names it
    assert (dest / "mine.pth").read_bytes() == b"a user's own file"  # not a build's name
    manifest = json.loads((dest / "model.json").read_text())
    second = f"probe_demo_seed{cfg.train_seed_model + 1}.pth"
    assert manifest["probe"] == {"file": [PROBE_FILE, second], "weight": 0.75,
                                 "smooth_s": 1.0, "memory_s": cfg.probe_memory_s,
                                 "smooth_q": 0.9}
    probe = load_probe([dest / PROBE_FILE, dest / second])
    assert isinstance(probe, ProbeEnsemble)
    assert probe.cfg.short_side == build_model(manifest["arch"]).default_cfg.input_size
    assert probe.cfg.step_s == cfg.probe_step_s == 0.3
    assert probe.cfg.frames == 6 == training["config"]["probe_frames"]
    assert probe.cfg.pool == "avgmax" == training["config"]["probe_pool"]
    assert probe.cfg.stabilise is True is training["config"]["probe_stabilise"]
    assert read_checkpoint(dest / second)["meta"]["seed"] == cfg.train_seed_model + 1
    meta = read_checkpoint(dest / PROBE_FILE)["meta"]
    assert meta["seed"] == cfg.train_seed_model
    assert meta["seg_checkpoint"] == str(tmp_path / "work" / "seg" / "latest.pth")
    # the training set and the probe's own extra case
    assert meta["extraction"]["cases"] == cfg.train_cases + 1 and meta["epochs"] == 1
    assert (meta["sliding_negatives"], meta["reversed_negatives"], meta["view_negatives"],
            meta["hinged_negatives"]) == (1.0, 0.0, 0.5, 0.25)
    assert meta["after_end_s"] == [0.5, 1.0] == training["config"]["probe_after_end_s"]
    assert meta["lookalike_neg"] == 1 == training["config"]["probe_lookalike_neg"]
    assert all(s["lookalike_negatives"] > 0 for s in meta["extraction"]["sets"])
    assert [Path(d).name for d in meta["extraction"]["data"]] == ["train", "probe-extra"]
    assert training["seconds"]["probe"] is not None and not training["other_eval_data"]
    assert "operating_point" in manifest and "calibration" in training
    readme = (dest / "README.md").read_text()
    assert (f"neighbourhood probe of 2 networks trained alike but for their seeds "
            f"(`{PROBE_FILE}`, `{second}`; it reads the mean of their probabilities)") in readme
    assert "and its score, its 0.9-quantile over 1 s, weighs 0.75" in readme
    assert "(PatchNet: 6 frames 0.3 s apart of a 32-pixel neighbourhood" in readme
    assert "given explicitly, its feature map pooled by its mean and its largest value per " \
        "channel side by side, each frame's neighbourhood where the view's motion carried " \
        "it), 1 epochs" in readme
    assert f"and 1 more case of its domain (`--seed {cfg.probe_seed}`)" in readme
    assert "one frame of each positive slid rigidly across the frames as a negative " \
        "(weight 1)" in readme
    assert "and one frame of each positive held while the view zooms (up to ×1.35) and the " \
        "light drifts (up to ×1.3) as a negative (weight 0.5)" in readme
    assert "and one frame of each positive cut in two, its halves turning about a pivot and " \
        "back like an instrument's jaws (up to 25° each way), as a negative (weight 0.25)" \
        in readme
    assert "and negatives on blood that is not bleeding (still pools, stained instrument " \
        "jaws, blood on the lens: the renderer's look-alike masks), up to 1 a masked frame" \
        in readme
    assert "and every map peak of the frames 0.5, 1 s after each bleeding's end (where none " \
        "is active) as a negative: the blood it left" in readme
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    again = build_demo(work, cfg, dest)
    assert again["seconds"] == training["seconds"]
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before

    # the folder's networks taken by a build that reads them otherwise (its probes' weight,
    # and read stabilised, which they are already): nothing trained, no training data made,
    # calibrated and evaluated again; where they came from recorded; a rerun redoes nothing
    reread = dataclasses.replace(cfg, probe_weight=0.5, probe_read_stabilise=True,
                                 version="9.9")
    with pytest.raises(DemoBuildError, match="another configuration"):
        build_demo(work, reread, dest)  # not in the first build's work directory
    work2, dest2 = tmp_path / "work2", tmp_path / "dest2"
    taken = build_demo(work2, reread, dest2, networks_from=dest)
    assert set(taken["seconds"]) == {"synth_eval", "calibrate", "evaluate", "total"}
    assert sorted(p.name for p in (work2 / "data").iterdir()) == [
        "heldout", "validation", "validation-static"]
    assert not any((work2 / d).exists() for d in ("seg", "amagi", "slowfast"))
    for f in (PROBE_FILE, second, manifest["checkpoint"], manifest["baseline"]["checkpoint"]):
        assert (dest2 / f).read_bytes() == before[f], f
    manifest2 = json.loads((dest2 / "model.json").read_text())
    assert (manifest2["version"], manifest2["probe"]["weight"]) == ("9.9", 0.5)
    assert manifest2["trained"] == manifest["trained"] and "operating_point" in manifest2
    assert taken["networks_from"] == {
        "from": str(dest), "version": cfg.version, "trained": manifest["trained"],
        "device": "cpu", "seconds": training["seconds"]}
    assert taken["history"] == training["history"] and taken["config"]["probe_weight"] == 0.5
    readme2 = (dest2 / "README.md").read_text()
    assert (f"- networks: version {cfg.version}'s (`{dest}`, built {manifest['trained']}), "
            "not trained again") in readme2
    assert "weighs 0.5 against the clip network's probability" in readme2
    assert json.loads((dest2 / "metrics.json").read_text()) != json.loads(
        before["metrics.json"])  # measured again, at another weight
    assert build_demo(work2, reread, dest2, networks_from=dest)["seconds"] == taken["seconds"]
    with pytest.raises(DemoBuildError, match=r"another configuration .*networks_from"):
        build_demo(work2, reread, dest2)  # nor trained where they were taken
