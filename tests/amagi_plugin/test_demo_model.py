"""The demo build's bookkeeping: a resumed build reports the time its stages took."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from amagi_plugin.demo_model import StageTimes
from amagi_plugin.errors import ConfigError, ExitCode
from amagi_plugin.evaluation.calibrate import LENGTHS_S, THRESHOLDS
from amagi_plugin.modelspec import DEMO_DIR


def test_resumed_build_keeps_the_recorded_stage_times(tmp_path: Path) -> None:
    path = tmp_path / "timings.json"
    first = StageTimes(path)
    first.record("synth", time.perf_counter() - 100.0, ran=True)
    first.record("train_seg", time.perf_counter() - 20.0, ran=True)
    assert json.loads(path.read_text())["synth"] >= 100.0
    # The next run finds both stages done and skips them: their times stay.
    resumed = StageTimes(path)
    resumed.record("synth", time.perf_counter(), ran=False)
    resumed.record("train_seg", time.perf_counter() - 30.0, ran=True)  # ran again
    resumed.record("evaluate", time.perf_counter() - 5.0, ran=True)
    report = resumed.report()
    assert 100.0 <= report["synth"] < 101.0
    assert 30.0 <= report["train_seg"] < 31.0
    assert report["total"] == round(report["synth"] + report["train_seg"] + report["evaluate"], 1)


def test_stage_skipped_but_never_timed_is_reported_as_unknown(tmp_path: Path) -> None:
    times = StageTimes(tmp_path / "timings.json")
    times.record("synth", time.perf_counter(), ran=False)
    times.record("evaluate", time.perf_counter() - 2.0, ran=True)
    report = times.report()
    assert report["synth"] is None and report["evaluate"] >= 2.0 and report["total"] is None


@pytest.mark.slow
def test_quick_demo_build_runs_every_stage_and_resumes(tmp_path: Path) -> None:
    """``make demo-model RECIPE=evidence-refined``'s code path at minute scale: every stage
    (the temporal segmenter trained on rawframe windows, look jitter, the head reading the
    map's evidence, the temporal refiner, bleeding-free validation), every evaluation set, a
    labelled README."""
    from amagi_plugin.demo_model import DemoConfig, build_demo
    from dicom_io.results import DEMO_DISCLAIMER
    from models import build_model, load_checkpoint

    # bleeding clips showing no bleeding at all left out of both clip networks' training;
    # the segmenter's crops partly on its own false peaks (so it trains 2 epochs, mining once)
    cfg = dataclasses.replace(DemoConfig.recipe("evidence-refined"), clip_min_visible_px=1,
                              seg_peak_negatives=0.3).quick()
    assert cfg.seg_epochs == 2
    assert cfg.train_domain == "randomised" and cfg.static_cases and cfg.shifted_cases
    dest = tmp_path / "dest"
    training = build_demo(tmp_path / "work", cfg, dest)
    assert training["device"] == "cpu"
    recorded = training["config"]  # what the build ran with, read back from training.json
    assert (recorded["train_domain"], recorded["train_cases"], recorded["still_negatives"],
            recorded["size"], recorded["eval_domain"]) == ("randomised", 4, 0.35, [160, 128],
                                                           "heldout")
    def tuples(v):
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    assert DemoConfig(**{k: tuples(v) for k, v in recorded.items()}) == cfg
    assert set(training["other_eval_data"]) == {"static", "shifted"}
    for name in ("metrics.json", "metrics_static.json", "metrics_shifted.json"):
        doc = json.loads((dest / name).read_text())
        assert doc["notice"] == DEMO_DISCLAIMER and set(doc["models"]) == {"SlowFast", "AMAGI"}
    static = json.loads((dest / "metrics_static.json").read_text())
    assert all(c["bleeding_free"] for c in static["cases"])
    assert static["pooled"]["AMAGI"]["false_alarms"]["bleeding_free_hours"] > 0
    heldout = json.loads((dest / "metrics.json").read_text())
    assert heldout["data"]["seed"] == cfg.eval_seed and len(heldout["cases"]) == cfg.eval_cases
    readme = (dest / "README.md").read_text()
    assert DEMO_DISCLAIMER.capitalize() in readme
    assert "## Bleeding-free held-out cases" in readme and "## The first held-out set" in readme
    assert "still negatives 35%" in readme and "look jitter 1 (white balance" in readme
    assert "segmentation: FlowSeg (5 frames)" in readme and "left out of 90% of the samples" in readme
    manifest = json.loads((dest / "model.json").read_text())
    assert manifest["arch"] == "amagi_tiny_tge"
    assert "fewer than 1 pixels of bleeding left out" in readme
    assert "30% of the crops centred instead on the net's own false peak" in readme
    from models.checkpoint import read_checkpoint

    seg_meta = read_checkpoint(tmp_path / "work" / "seg" / "latest.pth")["meta"]
    assert seg_meta["config"]["peak_negatives"] == 0.3 and seg_meta["false_peaks"]

    for net in ("amagi", "slowfast"):  # what each training run recorded that it did
        meta = read_checkpoint(tmp_path / "work" / net / "latest.pth")["meta"]
        assert meta["min_visible_px"] == 1 and meta["unseen_bleeding_left_out"] >= 0
    model = build_model(manifest["arch"])
    assert load_checkpoint(model, dest / manifest["checkpoint"]).ok
    assert heldout["pooled"]["AMAGI"]["guidance"]["frames"] > 0  # the temporal map, scored
    # each model's operating point, chosen on validation cases of the training domain,
    # is in model.json and is where the held-out evaluation read that model
    from amagi_plugin.analysis import OperatingPoint

    calibration = training["calibration"]
    validation = tmp_path / "work" / "data" / "validation"
    assert calibration["data"]["sets"] == [
        {"name": "validation", "seed": cfg.val_seed, "domain": "randomised", "cases": 2,
         "duration_s": 12.0},
        {"name": "validation-static", "seed": cfg.val_static_seed,
         "domain": "randomised-static", "cases": 1, "duration_s": 8.0}]
    assert len(list(validation.glob("*/labels.json"))) == 2
    # the refiner: trained on the main model's predictions of its own videos, named in
    # model.json, and so read by every evaluation
    from models.refiner import load_refiner

    assert manifest["refiner"] == "refiner_demo.pth"
    refiner = load_refiner(dest / "refiner_demo.pth")
    assert [tuple(r) for r in training["config"]["refiner_sets"]] == [
        ("randomised", 160001, 2), ("randomised-static", 160002, 1)]
    raw = json.loads((tmp_path / "work" / "evaluation" / "refiner-0" / "predictions.json")
                     .read_text())
    assert len(raw) == 2 and refiner.cfg.rate_hz == cfg.prediction_hz
    assert "temporal refiner `refiner_demo.pth`" in readme
    post = heldout["post_processing"]
    used = post.get("by_model") or {m: {k: post[k] for k in OperatingPoint.KEYS if k in post}
                                    for m in heldout["models"]}
    for entry, label in ((manifest, "AMAGI"), (manifest["baseline"], "SlowFast")):
        # model.json's operating points are calibrate's choices, as it recorded them
        point = OperatingPoint.from_json(entry["operating_point"])
        assert f"--seed {cfg.val_seed}" in entry["operating_point"]["chosen_on"]
        assert used[label] == point.to_json()
        record = calibration["models"][entry["checkpoint"]]
        assert record["label"] == entry["arch"]
        # each threshold alone and held at each lower one, at each length
        assert len(record["candidates"]) == len(LENGTHS_S) * sum(
            1 + sum(h < t for h in THRESHOLDS) for t in THRESHOLDS)
        assert record["chosen"] == entry["operating_point"]
        admissible = [c for c in record["candidates"]
                      if c["bleeding_free_false_alarms"] == 0] or record["candidates"]
        best = max(c["event_f1"] for c in admissible)
        assert next(c for c in record["candidates"]
                    if {k: c[k] for k in OperatingPoint.KEYS if k in c} == point.to_json()
                    )["event_f1"] == best
    assert "main model's operating point: threshold" in readme
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    again = build_demo(tmp_path / "work", cfg, dest)
    assert again["seconds"] == training["seconds"]
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_a_gpu_sized_recipe_on_the_cpu_is_warned_about(tmp_path: Path, capfd) -> None:
    from amagi_plugin.demo_model import GPU_RECIPES, main

    assert set(GPU_RECIPES) == {"shipped", "randomised-gpu", "evidence-peaks-gpu",
                                "evidence-probe-gpu", "evidence-probe-gpu-decoded",
                                "evidence-probe-gpu-x2", "evidence-probe-gpu-flow",
                                "evidence-probe-gpu-stab", "evidence-probe-gpu-read-stab"}
    busy = tmp_path / "work"
    busy.mkdir()
    (busy / "stray").write_text("x")  # refused at once: nothing is built
    for recipe, device, warned in (("shipped", "cpu", True), ("shipped", "cuda", False),
                                   ("evidence-probe", "cpu", False)):
        code = main(["--recipe", recipe, "--device", device, "--work-dir", str(busy)])
        err = capfd.readouterr().err
        assert code == ExitCode.FAILURE and "records no configuration" in err, err
        assert ("sized for a GPU" in err) is warned, (recipe, device, err)
    # given trained networks, a GPU-sized recipe trains nothing: no warning
    code = main(["--recipe", "evidence-probe-gpu-read-stab", "--networks-from", str(DEMO_DIR),
                 "--work-dir", str(busy)])
    err = capfd.readouterr().err
    assert code == ExitCode.FAILURE and "records no configuration" in err
    assert "sized for a GPU" not in err


def test_recipes_are_named_and_the_shipped_one_is_the_default() -> None:
    from amagi_plugin.demo_model import RECIPES, DemoConfig

    # the bundled model's recipe (9.3, session 42: evidence-probe at a GPU's budget); the
    # dataclass defaults are v3's
    assert DemoConfig.recipe("shipped") == DemoConfig.recipe("evidence-probe-gpu")
    assert DemoConfig.recipe("shipped").version == json.loads(
        (DEMO_DIR / "model.json").read_text())["version"]
    assert DemoConfig.recipe("v3") == DemoConfig()
    randomised = DemoConfig.recipe("randomised")
    assert (randomised.train_domain, randomised.eval_domain) == ("randomised", "heldout")
    assert randomised.still_negatives > 0 and randomised.eval_duration_s >= 180
    # the randomised recipes choose their operating point on validation cases; v3 did not
    assert randomised.val_cases > 0 and DemoConfig().val_cases == 0
    assert randomised.val_seed not in (randomised.train_seed, randomised.eval_seed,
                                       randomised.static_seed)
    assert set(RECIPES) == {"shipped", "v3", "randomised", "randomised-gpu", "temporal", "evidence",
                            "evidence-peaks", "evidence-refined", "evidence-peaks-gpu",
                            "evidence-probe-gpu", "evidence-probe-gpu-decoded",
                            "evidence-probe", "evidence-probe-gpu-x2",
                            "evidence-probe-gpu-flow", "evidence-probe-gpu-stab",
                            "evidence-probe-gpu-read-stab"}
    temporal = DemoConfig.recipe("temporal")  # the randomised recipe, temporal guidance
    assert temporal.arch == "amagi_tiny_tg" and temporal.baseline_arch == randomised.baseline_arch
    assert dataclasses.replace(temporal, arch=randomised.arch, version=randomised.version) == (
        randomised)
    evidence = DemoConfig.recipe("evidence")  # temporal, the map's evidence, look jitter
    assert evidence.arch == "amagi_tiny_tge" and evidence.clip_look_jitter > 0
    assert temporal.clip_look_jitter == 0.0
    assert dataclasses.replace(evidence, arch=temporal.arch, clip_look_jitter=0.0,
                               version=temporal.version) == temporal
    peaks = DemoConfig.recipe("evidence-peaks")  # evidence, seg crops on its false peaks
    assert (peaks.seg_peak_negatives, peaks.seg_mine_every, peaks.clip_min_visible_px) == (
        0.3, 2, 10) and evidence.seg_peak_negatives == 0.0
    assert peaks.val_cases == 0  # read at the authors' point, not one chosen on validation
    assert dataclasses.replace(peaks, seg_peak_negatives=0.0, seg_mine_every=1,
                               clip_min_visible_px=0, val_cases=evidence.val_cases,
                               version=evidence.version) == evidence
    refined = DemoConfig.recipe("evidence-refined")  # evidence, a refiner, quiet validation
    assert refined.refiner_sets and refined.val_static_cases and not evidence.refiner_sets
    assert dataclasses.replace(refined, refiner_sets=(), val_static_cases=0,
                               version=evidence.version) == evidence
    seeds = {seed for _, seed, _ in refined.refiner_sets}
    assert len(seeds) == 4 and not seeds & {refined.train_seed, refined.val_seed,
                                            refined.val_static_seed, refined.eval_seed,
                                            refined.static_seed}
    gpu = DemoConfig.recipe("randomised-gpu")
    assert gpu.train_domain == "randomised" and gpu.clip_epochs > randomised.clip_epochs
    assert (gpu.arch, gpu.clip_look_jitter) == (evidence.arch, evidence.clip_look_jitter)
    assert (gpu.refiner_sets, gpu.refiner_offset, gpu.val_static_cases) == (
        refined.refiner_sets, refined.refiner_offset, refined.val_static_cases)
    peaks_gpu = DemoConfig.recipe("evidence-peaks-gpu")  # evidence-peaks at gpu's budget
    budget = ("train_cases", "seg_epochs", "seg_mine_every", "clip_epochs", "batch_size",
              "clip_lr", "threads", "workers")
    assert dataclasses.replace(peaks_gpu, **{k: getattr(peaks, k) for k in budget}) == peaks
    assert {k: getattr(peaks_gpu, k) for k in budget} == {k: getattr(gpu, k) for k in budget}
    assert peaks_gpu.train_cases > peaks.train_cases and not peaks_gpu.refiner_sets
    probe_gpu = DemoConfig.recipe("evidence-probe-gpu")  # the shipped recipe at gpu's budget
    shipped = DemoConfig.recipe("shipped")
    assert probe_gpu == shipped and probe_gpu.version == "9.3"
    cpu_probe = DemoConfig.recipe("evidence-probe")  # 9.2: the same at the CPU's budget
    assert dataclasses.replace(probe_gpu, **{k: getattr(cpu_probe, k) for k in budget},
                               version="9.2") == cpu_probe
    assert {k: getattr(probe_gpu, k) for k in budget} == {k: getattr(gpu, k) for k in budget}
    decoded = DemoConfig.recipe("evidence-probe-gpu-decoded")  # that, on decoded frames
    assert (decoded.train_frames_from, probe_gpu.train_frames_from) == ("video", "render")
    assert dataclasses.replace(decoded, train_frames_from="render",
                               version=probe_gpu.version) == probe_gpu and decoded.version == "9.4"
    assert all(RECIPES[r].get("train_frames_from", "render") == "render"
               for r in RECIPES if r != "evidence-probe-gpu-decoded")
    x2 = DemoConfig.recipe("evidence-probe-gpu-x2")  # that, the probe at twice the scale
    assert (x2.probe_scale, x2.render_size, probe_gpu.render_size) == (2, (320, 256), (160, 128))
    assert dataclasses.replace(x2, probe_scale=1, version=probe_gpu.version) == probe_gpu
    assert all(RECIPES[r].get("probe_scale", 1) == 1 for r in RECIPES
               if r != "evidence-probe-gpu-x2")
    flow = DemoConfig.recipe("evidence-probe-gpu-flow")  # that, two blood textures
    assert (flow.train_flow_textures, probe_gpu.train_flow_textures) == (("waves", "advected"),
                                                                         ())
    assert dataclasses.replace(flow, train_flow_textures=(), version=probe_gpu.version) == \
        probe_gpu and flow.version == "9.6"
    assert all(not RECIPES[r].get("train_flow_textures") for r in RECIPES
               if r != "evidence-probe-gpu-flow")
    stab = DemoConfig.recipe("evidence-probe-gpu-stab")  # that, the probe stabilised
    assert (stab.probe_stabilise, probe_gpu.probe_stabilise) == (True, False)
    assert dataclasses.replace(stab, probe_stabilise=False, version=probe_gpu.version) == \
        probe_gpu and stab.version == "9.8"
    assert all(not RECIPES[r].get("probe_stabilise") for r in RECIPES
               if r != "evidence-probe-gpu-stab")
    read_stab = DemoConfig.recipe("evidence-probe-gpu-read-stab")  # 9.3's probe read so
    assert (read_stab.probe_read_stabilise, read_stab.probe_stabilise) == (True, False)
    assert dataclasses.replace(read_stab, probe_read_stabilise=False,
                               version=probe_gpu.version) == probe_gpu
    assert read_stab.version == "9.7"
    assert all(not RECIPES[r].get("probe_read_stabilise") for r in RECIPES
               if r != "evidence-probe-gpu-read-stab")
    with pytest.raises(ConfigError, match="train_flow_textures must be among waves, advected, "
                                          "got marbled"):
        DemoConfig(train_flow_textures=("waves", "marbled"))
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="probe_scale must be a whole number"):
            DemoConfig(probe_scale=bad)
    with pytest.raises(ConfigError, match="train_frames_from must be one of render, video"):
        DemoConfig(train_frames_from="decoded")
    with pytest.raises(ConfigError, match="unknown demo recipe 'gpu'"):
        DemoConfig.recipe("gpu")
    probe = DemoConfig.recipe("evidence-probe")  # evidence-peaks, a probe, its own point
    assert (probe.probe_epochs, probe.probe_candidates, probe.probe_weight) == (8, 8, 0.75)
    assert probe.probe_extra_cases == 96 and not probe.probe_static_cases
    assert probe.probe_sliding_negatives == 1.0 and not peaks.probe_sliding_negatives
    assert (probe.probe_step_s, peaks.probe_step_s) == (0.3, 0.2)
    assert probe.val_cases and probe.val_static_cases and not peaks.probe_epochs
    assert probe.probe_seed not in (probe.train_seed, probe.val_seed, probe.eval_seed,
                                    probe.static_seed, probe.val_static_seed)
    assert dataclasses.replace(probe, probe_epochs=0, probe_extra_cases=0, val_cases=0,
                               val_static_cases=0, probe_sliding_negatives=0.0,
                               probe_step_s=0.2, version=peaks.version) == peaks
    with pytest.raises(ConfigError, match="a probe or a refiner, not both"):
        dataclasses.replace(probe, refiner_sets=refined.refiner_sets)


def test_a_work_directory_of_another_build_is_refused_with_one_line(tmp_path, capsys) -> None:
    from amagi_plugin.demo_model import main

    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_text(json.dumps({"version": "0.1", "train_cases": 1}))
    code = main(["--work-dir", str(work), "--dest", str(tmp_path / "dest"), "--quick"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("demo-model: error: ")
    assert "holds a build with another configuration" in err[-1] and "train_cases" in err[-1]
    assert not (tmp_path / "dest").exists()
    (work / "config.json").unlink()
    (work / "stray").write_text("x")
    assert main(["--work-dir", str(work), "--dest", str(tmp_path / "dest")]) == 1
    assert "is not empty and records no configuration" in capsys.readouterr().err


def test_each_recipe_builds_in_its_own_work_directory() -> None:
    from amagi_plugin.demo_model import DEFAULT_WORK, RECIPES, default_work_dir

    assert default_work_dir() == DEFAULT_WORK  # make demo-model, as before
    dirs = {default_work_dir(r, q) for r in RECIPES for q in (False, True)}
    assert len(dirs) == 2 * len(RECIPES)  # a quick run or another recipe never collides
    assert default_work_dir("temporal") == DEFAULT_WORK.with_name("demo-model-temporal")
    assert all(d.parent == DEFAULT_WORK.parent for d in dirs)


def test_amagi_train_demo_uses_the_recipes_work_directory(run_cli, tmp_path: Path,
                                                          monkeypatch) -> None:
    """``amagi train demo --recipe R`` resumes where ``make demo-model RECIPE=R`` builds, not
    in the shipped recipe's folder (whose other configuration it would refuse)."""
    from amagi_plugin import demo_model

    monkeypatch.setattr(demo_model, "DEFAULT_WORK", tmp_path / "demo-model")
    work = tmp_path / "demo-model-temporal-quick"
    work.mkdir()
    (work / "stray").write_text("x")  # refused before anything runs: the folder was chosen
    r = run_cli("train", "demo", "--recipe", "temporal", "--quick",
                "--dest", str(tmp_path / "dest"))
    assert r.code != 0 and f"{work} is not empty and records no configuration" in r.stderr
    assert not (tmp_path / "dest").exists()


def test_amagi_train_demo_takes_networks_from_a_folder(run_cli, tmp_path: Path,
                                                       monkeypatch) -> None:
    """``amagi train demo --networks-from DIR`` hands the folder to the build, which refuses
    one trained otherwise than the recipe says before its work directory is made."""
    from amagi_plugin import demo_model

    monkeypatch.setattr(demo_model, "DEFAULT_WORK", tmp_path / "demo-model")
    r = run_cli("train", "demo", "--recipe", "evidence-probe-gpu-stab", "--networks-from",
                str(DEMO_DIR), "--dest", str(tmp_path / "dest"))
    assert r.code != 0 and "probe_stabilise False there, True here" in r.stderr
    assert not any(tmp_path.iterdir())


def test_bf16_training_is_a_choice_refused_where_the_device_would_emulate_it(
        run_cli, tmp_path: Path, monkeypatch) -> None:
    """``--precision bf16`` (``make demo-model PRECISION=bf16``, ``amagi train demo``) sets
    the build's ``train_precision``, which every network's training is given; on a device
    without native bf16 the build is refused before its work directory is made."""
    from amagi_plugin import demo_model, modelspec
    from amagi_plugin.demo_model import RECIPES, DemoConfig, build_demo

    assert all(DemoConfig.recipe(r).train_precision == "fp32" for r in RECIPES)
    cfg = DemoConfig.recipe("evidence-probe", precision="bf16")
    assert cfg == dataclasses.replace(DemoConfig.recipe("evidence-probe"),
                                      train_precision="bf16")
    with pytest.raises(ConfigError, match="train_precision must be one of fp32, bf16"):
        dataclasses.replace(cfg, train_precision="fp16")
    monkeypatch.setattr(modelspec, "bf16_native", lambda device: False)
    with pytest.raises(ConfigError, match="train_precision bf16: cpu does not compute"):
        build_demo(tmp_path / "work", cfg.quick(), tmp_path / "dest")
    monkeypatch.setattr(demo_model, "DEFAULT_WORK", tmp_path / "demo-model")
    r = run_cli("train", "demo", "--recipe", "evidence-probe", "--quick", "--precision",
                "bf16", "--dest", str(tmp_path / "dest"))
    assert r.code != 0 and "train_precision bf16: cpu does not compute" in r.stderr
    assert demo_model.main(["--recipe", "evidence-probe", "--quick", "--precision", "bf16",
                            "--work-dir", str(tmp_path / "work"),
                            "--dest", str(tmp_path / "dest")]) != 0
    assert not any(tmp_path.iterdir())
    # where it runs, each training is given the precision
    seen: list[list[str]] = []

    class Failed:  # a training process that ends at once, unsuccessfully
        def __init__(self, argv, **_kw) -> None:
            seen.append(list(argv))

        def wait(self) -> int:
            return 1

    monkeypatch.setattr(modelspec, "bf16_native", lambda device: True)
    def made(argv: list[str]) -> None:  # a stage that writes only its output folder
        seen.append(argv)
        if "-od" in argv:
            Path(argv[argv.index("-od") + 1]).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(demo_model, "_cli", made)
    monkeypatch.setattr(demo_model.subprocess, "Popen", Failed)
    with pytest.raises(demo_model.DemoBuildError, match="training amagi failed"):
        build_demo(tmp_path / "work", cfg.quick(), tmp_path / "dest")
    train = [a[a.index("train"):] for a in seen if "train" in a]
    assert [a[:2] for a in train] == [["train", "seg"], ["train", "clip"], ["train", "clip"]]
    assert all(a[a.index("--precision") + 1] == "bf16" for a in train)


def test_a_build_stops_only_after_training(tmp_path: Path) -> None:
    from amagi_plugin.demo_model import DemoConfig, build_demo

    with pytest.raises(ConfigError, match="stop_after must be one of 'trained', 'clip'"):
        build_demo(tmp_path / "work", DemoConfig(), tmp_path / "dest", stop_after="evaluated")
    assert not (tmp_path / "work").exists()  # refused before anything was made


def test_the_training_looks_draw_both_blood_textures_and_held_out_sets_never(
        tmp_path: Path, monkeypatch) -> None:
    """``train_flow_textures``: every set of the training looks (training, the probe's,
    validation, bleeding-free validation) gets ``--flow-textures``; the held-out, still-blood
    and shifted sets keep their preset (the commands the build runs, recorded instead of
    run); the demo README says so."""
    import json

    from amagi_plugin import demo_model

    calls: list[list[str]] = []
    monkeypatch.setattr(demo_model, "_cli", calls.append)
    flow = demo_model.DemoConfig.recipe("evidence-probe-gpu-flow")
    for i, domain in enumerate(("randomised", "randomised-static", "heldout", "static",
                                "shifted")):
        for cfg in (flow, demo_model.DemoConfig.recipe("shipped")):
            assert demo_model._synth(tmp_path / f"{i}", 2, 5, 8.0, cfg, domain, "rawframes", 1, 1)
            argv = calls.pop()
            given = argv[argv.index("--flow-textures") + 1] if "--flow-textures" in argv else None
            training_looks = domain in ("randomised", "randomised-static") and cfg is flow
            assert given == ("waves,advected" if training_looks else None), (domain, cfg.version)
    training = json.loads((demo_model.DEMO_DIR / "training.json").read_text())
    manifest = json.loads((demo_model.DEMO_DIR / "model.json").read_text())
    plain = demo_model.readme(manifest, training, "")
    training["config"]["train_flow_textures"] = ["waves", "advected"]
    text = demo_model.readme(manifest, training, "")
    assert "--flow-textures" not in plain
    assert "blood texture drawn from waves, advected (`--flow-textures waves,advected`" in text


def test_a_finer_probe_draws_every_set_at_its_scale_and_trains_at_it(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """``probe_scale`` 2: ``amagi synth`` draws at twice ``size`` and ``amagi train probe``
    gets ``--scale 2`` (the commands the build runs, recorded instead of run)."""
    from amagi_plugin import demo_model

    calls: list[list[str]] = []
    monkeypatch.setattr(demo_model, "_cli", calls.append)
    cfg = demo_model.DemoConfig.recipe("evidence-probe-gpu-x2")
    assert demo_model._synth(tmp_path / "set", 2, 5, 8.0, cfg, "randomised", "rawframes", 1, 1)
    argv = calls.pop()
    assert argv[argv.index("--size") + 1] == "320x256"
    seg = tmp_path / "seg"
    seg.mkdir()
    (seg / "latest.pth").write_bytes(b"")
    (tmp_path / "stage").mkdir()

    def trained(argv: list[str]) -> None:
        calls.append(argv)
        Path(argv[argv.index("-o") + 1]).write_bytes(b"probe")

    monkeypatch.setattr(demo_model, "_cli", trained)
    assert demo_model._probe(tmp_path, seg, [tmp_path / "set"], tmp_path / "stage", cfg, "cpu")
    (argv,) = calls
    assert argv[:2] == ["train", "probe"] and argv[argv.index("--scale") + 1] == "2"


def test_a_build_takes_networks_only_from_a_folder_trained_alike(tmp_path: Path,
                                                                   capsys) -> None:
    """``--networks-from``: the bundled folder's networks may be read by a recipe that
    differs from its build only in how they are read (``evidence-probe-gpu-read-stab``);
    a recipe that would have trained them otherwise, a folder that is not a build's, one
    whose record names settings this version does not know or that lacks a network, and a
    stop after training are refused with one line before any work directory is made."""
    import shutil

    from amagi_plugin.demo_model import (
        READ_FIELDS,
        DemoBuildError,
        DemoConfig,
        _adoptable,
        build_demo,
        main,
    )

    read_stab = DemoConfig.recipe("evidence-probe-gpu-read-stab")
    manifest, training = _adoptable(DEMO_DIR, read_stab)
    assert manifest["version"] == training["config"]["version"] == "9.3"
    assert set(read_stab.to_json()) > READ_FIELDS  # every name a field
    work, dest = tmp_path / "work", tmp_path / "dest"
    for recipe, what in (("evidence-probe-gpu-stab", "probe_stabilise False there, True here"),
                         ("evidence-probe", "clip_epochs 16 there, 10 here")):
        code = main(["--recipe", recipe, "--networks-from", str(DEMO_DIR), "--work-dir",
                     str(work), "--dest", str(dest)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err[-1].startswith("demo-model: error: ") and what in err[-1]
        assert "holds networks trained otherwise than this recipe says" in err[-1]
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(DemoBuildError, match=r"not a demo model folder: cannot read model\.json"):
        build_demo(work, read_stab, dest, networks_from=folder)
    for f in ("model.json", "training.json"):
        shutil.copyfile(DEMO_DIR / f, folder / f)
    with pytest.raises(DemoBuildError, match=r"lacks amagi_tiny_tge_demo\.pth, "
                                             r"slowfast_tiny_demo\.pth, probe_demo\.pth"):
        build_demo(work, read_stab, dest, networks_from=folder)
    doc = json.loads((folder / "training.json").read_text())
    doc["config"]["probe_colour"] = "green"
    (folder / "training.json").write_text(json.dumps(doc))
    with pytest.raises(DemoBuildError, match="settings this version does not know: "
                                             "probe_colour"):
        build_demo(work, read_stab, dest, networks_from=folder)
    # a field the folder's build did not know yet reads as its default
    del doc["config"]["probe_colour"], doc["config"]["probe_read_stabilise"]
    (folder / "training.json").write_text(json.dumps(doc))
    with pytest.raises(DemoBuildError, match="lacks"):  # the configuration passed
        build_demo(work, read_stab, dest, networks_from=folder)
    with pytest.raises(ConfigError, match="trains nothing: it cannot stop after training"):
        build_demo(work, read_stab, dest, stop_after="trained", networks_from=DEMO_DIR)
    assert not work.exists() and not dest.exists()


def test_a_probe_read_stabilised_is_saved_so_with_its_weights(tmp_path: Path) -> None:
    """The model-folder copy of a probe trained unstabilised, for a recipe that reads it
    stabilised: the same weights and record, the option on, what it was trained on noted;
    for any other recipe, or a probe trained stabilised, the file itself."""
    import torch

    from amagi_plugin.demo_model import DemoConfig, _stage_probe
    from models.checkpoint import read_checkpoint
    from models.patchnet import PatchNet, PatchNetConfig, load_patchnet, save_patchnet

    torch.manual_seed(0)
    trained = save_patchnet(PatchNet(PatchNetConfig(frames=4)), tmp_path / "p.pth",
                            meta={"seed": 7, "epochs": 8})
    read_stab = DemoConfig.recipe("evidence-probe-gpu-read-stab")
    _stage_probe(trained, tmp_path / "read.pth", read_stab)
    before, after = load_patchnet(trained), load_patchnet(tmp_path / "read.pth")
    assert (before.cfg.stabilise, after.cfg.stabilise) == (False, True)
    assert dataclasses.replace(after.cfg, stabilise=False) == before.cfg
    a, b = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = read_checkpoint(tmp_path / "read.pth")["meta"]
    assert (meta["seed"], meta["epochs"], meta["trained_stabilised"]) == (7, 8, False)
    _stage_probe(trained, tmp_path / "plain.pth", DemoConfig.recipe("evidence-probe-gpu"))
    assert (tmp_path / "plain.pth").read_bytes() == trained.read_bytes()
    _stage_probe(tmp_path / "read.pth", tmp_path / "again.pth", read_stab)  # already on
    assert (tmp_path / "again.pth").read_bytes() == (tmp_path / "read.pth").read_bytes()
