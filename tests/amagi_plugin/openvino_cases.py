"""The OpenVINO backend's numbers, run by ``test_backends.py`` in a fresh interpreter of
their own (``python -m pytest`` on this file), so that no pytest worker holds OpenVINO's
thread pool beside the rest of the suite: the compiled clip network and probe give torch's
logits and maps within the reference tolerance of ``tests/models`` (against the authors'
own outputs for AMAGI-SF50), an analysis on them the same probabilities and events, and
the configuration reaches them."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
import torch

from amagi_plugin import backends, fastpath
from amagi_plugin.analysis import find_events, smooth_decisions
from amagi_plugin.backends import CompiledClipNetwork
from amagi_plugin.modelspec import DEMO_DIR, model_dir_specs
from amagi_plugin.pipeline import AnalysisOptions
from amagi_plugin.runtime import load_analyzer
from models import build_model
from models.hrnet_ocr import main_logits
from tests.amagi_plugin.test_pipeline import ArrayVideo
from tests.amagi_plugin.test_pipeline_fast import (
    FAST_TOLERANCE,
    PROBE_BF16_TOLERANCE,
    clear_threshold,
)


def reference_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """``tests/models``' tolerance for logits against a reference: 1e-4 of its scale + 1e-5."""
    tol = 1e-4 * ref.abs().max().item() + 1e-5
    err = (ours.double() - ref.double()).abs().max().item()
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g}"


def _torch_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kept: list[torch.Tensor] = []
    hook = model.backbone.seg_model.register_forward_hook(
        lambda _m, _x, out: kept.append(main_logits(out)))
    try:
        with torch.inference_mode():
            return model(x), kept[-1]
    finally:
        hook.remove()


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, CompiledClipNetwork]:
    torch.manual_seed(0)
    model = build_model("amagi_tiny_tge").eval()
    return model, CompiledClipNetwork(model, model.default_cfg.clip_shape,
                                      model.backbone.seg_model)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_compiled_network_gives_torchs_logits_and_maps_at_any_batch(tiny, batch: int) -> None:
    model, compiled = tiny
    x = torch.randn(batch, *model.default_cfg.clip_shape,
                    generator=torch.Generator().manual_seed(batch))
    logits, seg_map = _torch_outputs(model, x)
    got = compiled(x)
    assert got.shape == logits.shape and compiled.last_maps.shape == seg_map.shape
    reference_close(got, logits)
    reference_close(compiled.last_maps, seg_map)
    # not a constant network: another batch gives other logits
    assert not torch.allclose(got, compiled(torch.rand_like(x)), atol=1e-4)


def test_threads_sharing_a_compiled_network_each_get_their_own_outputs(tiny) -> None:
    model, compiled = tiny
    xs = [torch.randn(4, *model.default_cfg.clip_shape,
                      generator=torch.Generator().manual_seed(10 + k)) for k in range(2)]
    want = [_torch_outputs(model, x) for x in xs]
    got: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def work(k: int) -> None:
        start.wait()
        for _ in range(5):
            got[k].append((compiled(xs[k]), compiled.last_maps))

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for k in (0, 1):
        assert len(got[k]) == 5
        for logits, seg_map in got[k]:
            reference_close(logits, want[k][0])
            reference_close(seg_map, want[k][1])


@pytest.mark.parametrize("members", [1, 2])
def test_a_compiled_probe_gives_torchs_logits(members: int) -> None:
    """The demo's neighbourhood probe (alone, or in an ensemble with a perturbed copy, read
    as one) compiled by OpenVINO."""
    from amagi_plugin.backends import compiled_probe
    from amagi_plugin.modelspec import DEMO_DIR, demo_manifest, manifest_probe
    from models.patchnet import ProbeEnsemble, load_probe

    paths = list(manifest_probe(demo_manifest(), DEMO_DIR)[0])
    net = load_probe(paths)
    if members == 2:
        other = load_probe(paths)
        torch.manual_seed(0)
        with torch.no_grad():
            for w in other.parameters():
                w.add_(0.05 * torch.randn_like(w))
        net = ProbeEnsemble([net, other])
    net.eval()
    cfg = net.cfg
    run = compiled_probe(net)
    for n in (1, 5, 40):
        x = torch.randn(n, cfg.frames, 3, cfg.crop, cfg.crop,
                        generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            want = net(x)
        got = run(x)
        assert got.shape == want.shape == (n,)
        reference_close(got, want)
    assert np.ptp(want.numpy()) > 1e-2  # not a constant network


@pytest.mark.slow
def test_amagi_sf50_on_openvino_gives_the_authors_logits() -> None:
    """Full size: AMAGI-SF50 with the reference's synthetic weights, compiled by OpenVINO,
    against the per-clip logits the authors' code computed (``tests/models/reference``)."""
    from tests.models._reference import manifest, synth

    man = manifest("amagi_sf50")
    ref = man["reference"]
    model = build_model("amagi_sf50").eval()
    model.load_state_dict(synth().synth_state_dict(man["state_dict"]), strict=True)
    compiled = CompiledClipNetwork(model, model.default_cfg.clip_shape, None)
    x = synth().synth_input(ref["input_shape"], ref["input_seed"])
    logits = compiled(x.reshape(-1, *x.shape[2:]))
    assert compiled.last_maps is None
    reference_close(logits, torch.tensor(ref["per_clip_logits"]))


@functools.cache
def _demo_case():
    """4 s of a generated case with a bleeding, and the bundled demo's main model."""
    from amagi_plugin.synth.render import Renderer
    from amagi_plugin.synth.scene import sample_scene

    scene = sample_scene(3, width=160, height=128, fps=30, duration_s=4, ranges="train")
    video = ArrayVideo(np.stack([f.rgb for f in Renderer(scene).frames()]), 30.0)
    return video, model_dir_specs(DEMO_DIR)[0][-1]


def test_the_demo_on_openvino_matches_torch_and_its_probe_reads_the_compiled_maps() -> None:
    """The bundled demo (AMAGI with its probe) over 4 s of a generated case with a bleeding:
    the clip probabilities, the probe's scores (its network compiled too, its maps taken
    from the compiled clip network's second output, no instant mapped again) and the events
    as on torch."""
    video, main = _demo_case()
    results = {}
    for backend in ("torch", "openvino"):
        a = load_analyzer(main, AnalysisOptions(backend=backend))
        assert (a.compiled is None) == (backend == "torch")
        assert (a.probe.run is a.probe.net) == (backend == "torch")
        assert len(a.probe_maps_from_clips(a.schedule_for(video))) == 40
        mapped, segment = [0], a.probe.segment

        def counting(x: torch.Tensor, segment=segment, mapped=mapped) -> torch.Tensor:
            mapped[0] += len(x)
            return segment(x)

        a.probe.segment = counting
        results[backend] = a.analyze(video)
        assert mapped[0] == 0
    t, o = results["torch"], results["openvino"]
    assert np.ptp(t.clip_probabilities) > 0.1 and np.ptp(t.probe_scores) > 0.1  # not constants
    np.testing.assert_allclose(o.clip_probabilities, t.clip_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(o.probe_scores, t.probe_scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(o.probabilities, t.probabilities, rtol=0, atol=1e-5)
    assert [(e.start_frame, e.end_frame) for e in o.events] == \
        [(e.start_frame, e.end_frame) for e in t.events]


@functools.cache
def _exact_demo():
    """The demo case analysed on torch's exact path (the reference of the switch)."""
    video, main = _demo_case()
    return load_analyzer(main, AnalysisOptions()).analyze(video)


@pytest.mark.parametrize("cpu", ["this CPU", "a CPU without native bf16"])
def test_the_speed_switch_on_openvino_computes_in_bf16_where_native_within_its_tolerance(
        cpu: str, monkeypatch) -> None:
    """The speed switch on OpenVINO: bf16 (both networks) where this CPU computes it natively,
    fp32 elsewhere (an AVX2 CPU, made here by hiding the native bf16 of this one); the demo's
    probabilities within the switch's tolerance of the exact torch path, its probe's scores
    within the probe's bf16 tolerance, the same events at a threshold no probability lies
    near (``test_pipeline_fast``'s criteria)."""
    if cpu != "this CPU":
        for module in (fastpath, backends):
            monkeypatch.setattr(module, "bf16_native", lambda _device: False)
    video, main = _demo_case()
    ref = _exact_demo()
    fast = load_analyzer(main, AnalysisOptions(backend="openvino", fast=True))
    native = backends.bf16_native("cpu")
    assert fast.options.bf16 is native and fast.compiled.bf16 is native
    got = fast.analyze(video)
    dp = np.abs(got.probabilities - ref.probabilities)
    assert dp.max() <= (FAST_TOLERANCE if native else 1e-4), dp.max()
    assert np.abs(got.probe_scores - ref.probe_scores).max() <= PROBE_BF16_TOLERANCE
    threshold, margin = clear_threshold(ref.probabilities, runs=10)
    assert margin > dp.max(), (threshold, margin, dp.max())
    spans = [[(e.start_frame, e.end_frame) for e in find_events(
        r.probabilities, smooth_decisions(r.probabilities, r.timeline.rate_hz, threshold,
                                          "none", 0), r.timeline)] for r in (ref, got)]
    assert spans[0] and spans[1] == spans[0]


def test_the_configured_backend_reaches_the_analyzer(tmp_path) -> None:
    from amagi_plugin.config import load_config
    from amagi_plugin.runtime import analyzer_from_config

    cfg = load_config(environ={}, cwd=tmp_path, overrides={"model.backend": "openvino"})
    analyzer, _ = analyzer_from_config(cfg)
    assert analyzer.options.backend == "openvino" and analyzer.compiled is not None
    assert analyzer.probe.run is not analyzer.probe.net
