"""Equivalence with the outputs of the authors' code (data in tests/models/reference/): keys, synthetic weights, logits, probabilities, the 7x7
sigmoid maps and every recorded intermediate, for both weight recipes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models import Recognizer, build_model
from tests.models._reference import manifest, synth

CASES = {  # model name -> reference file
    "amagi_sf50": "amagi_sf50",
    "amagi_sf152": "amagi_sf152",
    "slowfast_r50": "slowfast_r50_k400",
}


def _close(ours: torch.Tensor, ref: Any, scale: float) -> None:
    ref_t = torch.as_tensor(ref, dtype=torch.float64)
    tol = 1e-4 * scale + 1e-5
    err = (ours.double().reshape(ref_t.shape) - ref_t).abs().max().item()
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g}"


def _check_stats(t: torch.Tensor, ref: dict[str, Any], what: str) -> None:
    assert list(t.shape) == ref["shape"], what
    assert bool(torch.isfinite(t).all()) == ref["finite"], what
    scale = max(abs(ref["min"]), abs(ref["max"]))
    d = t.double()
    for key, value in (("mean", d.mean()), ("std", d.std()), ("first8", d.flatten()[:8]),
                       ("min", d.min()), ("max", d.max())):
        try:
            _close(value, ref[key], scale)
        except AssertionError as e:
            raise AssertionError(f"{what} {key}: {e}") from None


def _recipe(name: str, tamed: bool) -> dict[str, Any]:
    if not tamed:
        return {}
    return dict(synth().TAMED) if name.startswith("amagi") else {"gain": 1.0}


@pytest.fixture(scope="module", params=[
    "amagi_sf50", pytest.param("amagi_sf152", marks=pytest.mark.slow), "slowfast_r50"])
def model_and_manifest(request: pytest.FixtureRequest) -> tuple[Recognizer, dict[str, Any]]:
    return build_model(request.param).eval(), manifest(CASES[request.param])


def test_state_dict_matches_manifest_key_by_key(model_and_manifest):
    model, man = model_and_manifest
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()]
    ref = [(e["key"], e["shape"], e["dtype"]) for e in man["state_dict"]]
    assert len(ours) == man["state_dict_num_keys"]
    assert ours == ref
    prefixes: dict[str, int] = {}
    for k, *_ in ours:
        for p in man["key_prefix_counts"]:
            if k.startswith(p + "."):
                prefixes[p] = prefixes.get(p, 0) + 1
    assert prefixes == man["key_prefix_counts"] or not man["key_prefix_counts"]


@pytest.mark.parametrize("tamed", [False, True], ids=["main", "tamed"])
def test_synthetic_weights_load_strictly_and_sum_as_recorded(model_and_manifest, tamed):
    model, man = model_and_manifest
    name = model.default_cfg.name
    sd = synth().synth_state_dict(man["state_dict"], **_recipe(name, tamed))
    model.load_state_dict(sd, strict=True)
    field = "synth_sum_tamed" if tamed else "synth_sum"
    ours = model.state_dict()
    for e in man["state_dict"]:
        s = ours[e["key"]].double().sum().item()
        assert s == pytest.approx(e[field], rel=1e-9, abs=1e-9), e["key"]


@pytest.mark.parametrize("tamed", [False, True], ids=["main", "tamed"])
def test_outputs_match_reference(model_and_manifest, tamed):
    model, man = model_and_manifest
    name = model.default_cfg.name
    ref = man["reference_tamed" if tamed else "reference"]
    model.load_state_dict(synth().synth_state_dict(man["state_dict"], **_recipe(name, tamed)))
    x = synth().synth_input(ref["input_shape"], ref["input_seed"])
    _check_stats(x, ref["input_stats"], "input")

    captured: dict[str, torch.Tensor] = {}
    handles = []
    extra = ref.get("intermediates_extra", {})
    for hook_name in extra:
        if hook_name.startswith("seg_input"):
            continue
        mod_name = hook_name if hook_name.startswith("cls_head.") else "backbone." + hook_name
        module = model.get_submodule(mod_name)

        def hook(_m, _i, out, hook_name=hook_name):
            captured[hook_name] = out.detach().clone()

        handles.append(module.register_forward_hook(hook))

    def backbone_hook(_m, _i, out):
        captured["backbone"] = out

    handles.append(model.backbone.register_forward_hook(backbone_hook))
    try:
        with torch.inference_mode():
            if name.startswith("amagi"):
                probs = model.predict(x)
                logits = captured["cls_head.fc_cls"]
            else:
                logits = model(x)
    finally:
        for h in handles:
            h.remove()

    if name.startswith("amagi"):
        ref_logits = torch.tensor(ref["per_clip_logits"])
        _close(logits, ref_logits, ref_logits.abs().max().item())
        assert torch.allclose(probs, torch.tensor(ref["averaged_prob"]), rtol=0, atol=1e-5)
        per_clip = torch.softmax(logits, dim=1)
        assert torch.allclose(per_clip, torch.tensor(ref["softmax_per_clip"]), rtol=0, atol=1e-5)
        (x_slow, x_fast), seg = captured["backbone"]
        sig = captured["cls_head.sigmoid"]
        assert list(sig.shape) == ref["seg_map_sigmoid_shape"]
        assert torch.allclose(sig.flatten(), torch.tensor(ref["seg_map_sigmoid_full"]),
                              rtol=0, atol=1e-5)
        inter = ref["intermediates"]
        _check_stats(seg[0], inter["seg_out[0] (aux_head / out_aux)"], "seg aux")
        _check_stats(seg[1], inter["seg_out[1] (cls_head / out)"], "seg main")
        _check_stats(seg[0] + seg[1], inter["seg_sum = seg_out[0] + seg_out[1]"], "seg sum")
        _check_stats(captured["cls_head.seg_reduction"],
                     inter["seg_reduction(seg_sum) (pre-sigmoid)"], "seg reduction")
        _check_stats(sig, inter["sigmoid(seg_reduction(seg_sum))"], "sigmoid map")
        _check_stats(x_slow, inter["backbone slow pathway output (out[0][0])"], "slow out")
        _check_stats(x_fast, inter["backbone fast pathway output (out[0][1])"], "fast out")
        clips = x.reshape(-1, *x.shape[2:])
        seg_in = clips[:, :, clips.shape[2] // 2]
        _check_stats(seg_in, extra["seg_input (center frame x[:, :, T//2])"], "seg input")
    else:
        ref_logits = torch.tensor(ref["logits"])
        _close(logits[0], ref_logits, ref_logits.abs().max().item())
        assert torch.allclose(torch.softmax(logits, 1)[0], torch.tensor(ref["prob"]),
                              rtol=0, atol=1e-5)
        x_slow, x_fast = captured["backbone"]
        inter = ref["intermediates"]
        _check_stats(x_slow, inter["backbone slow pathway output (out[0])"], "slow out")
        _check_stats(x_fast, inter["backbone fast pathway output (out[1])"], "fast out")
    for hook_name, stats in extra.items():
        if not hook_name.startswith("seg_input"):
            _check_stats(captured[hook_name], stats, hook_name)
