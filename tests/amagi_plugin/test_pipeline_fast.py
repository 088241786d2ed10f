"""The speed switch (``model.fast``/``--fast``) and the service's devices (``worker.devices``).

The fast path is checked against the exact one with the bundled demo models on a generated
case: probabilities within the documented tolerance, the same events. On a CPU without
native bfloat16 the switch keeps fp32 and the difference is float rounding only.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from amagi_plugin.analysis import find_events, smooth_decisions
from amagi_plugin.config import ConfigError, load_config
from amagi_plugin.errors import InputError
from amagi_plugin.fastpath import bf16_native, check_devices_available
from amagi_plugin.modelspec import DEMO_DIR, demo_manifest, model_dir_specs
from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from amagi_plugin.runtime import load_analyzer
from amagi_plugin.transforms import (
    AUTHORS_STD,
    ResizeShortSide,
    clip_frame_transform,
    device_frame_transform,
    resize_short_side,
)
from tests.amagi_plugin.test_pipeline import ArrayVideo

#: Largest |Δp| allowed between the fast and the exact path (README, "Speed switch").
FAST_TOLERANCE = 0.02
#: Largest |Δ| of a probe score under the switch at the same places (the probe in bf16;
#: measured 0.0037 on random neighbourhoods); a moved place changed one by 0.044.
PROBE_BF16_TOLERANCE = 0.01

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.fixture(scope="module")
def case() -> ArrayVideo:
    """5 s of a generated training-domain case with one bleeding event from 2.1 s."""
    from amagi_plugin.synth.render import Renderer
    from amagi_plugin.synth.scene import sample_scene

    scene = sample_scene(3, width=160, height=128, fps=15, duration_s=5, ranges="train")
    return ArrayVideo(np.stack([f.rgb for f in Renderer(scene).frames()]), 15.0)


def _demo(role: str) -> torch.nn.Module:
    """The bundled demo's AMAGI (``main``) or its SlowFast ``baseline``, loaded."""
    from models import build_model, load_checkpoint

    manifest = demo_manifest()
    entry = manifest if role == "main" else manifest["baseline"]
    model = build_model(entry["arch"], **entry.get("build", {}))
    load_checkpoint(model, DEMO_DIR / entry["checkpoint"])
    return model


def _demo_analyzer(role: str, options: AnalysisOptions) -> BleedingAnalyzer:
    """An analyzer of the bundled demo's main model (with its neighbourhood probe when it
    has one) or of its baseline, wired as every analysis is (``runtime.load_analyzer``)."""
    baseline, main = model_dir_specs(DEMO_DIR)[0]
    return load_analyzer(main if role == "main" else baseline, options)


def clear_threshold(p: np.ndarray, runs: int) -> tuple[float, float]:
    """The middle of the widest gap between the sorted values of ``p`` that leaves at least
    ``runs`` values above it, and the gap's half width (how far every value stays from it)."""
    v = np.sort(p)[: len(p) - runs + 1]
    i = int(np.argmax(np.diff(v)))
    return float(v[i] + v[i + 1]) / 2, float(v[i + 1] - v[i]) / 2


def test_clear_threshold_finds_the_widest_gap_below_the_top_values() -> None:
    assert clear_threshold(np.array([0.1, 0.2, 0.6, 0.65, 0.9]), 2) == pytest.approx((0.4, 0.2))
    # the gap below the top value alone is wider, but fewer than 3 values would lie above it
    assert clear_threshold(np.array([0.1, 0.5, 0.52, 0.55, 0.99]), 3) == pytest.approx(
        (0.3, 0.2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("role", ["main", "baseline"])
def test_fast_path_matches_exact_within_tolerance(case, role: str, device: str) -> None:
    exact = _demo_analyzer(role, AnalysisOptions(device=device))
    fast = _demo_analyzer(role, AnalysisOptions(device=device, fast=True))
    assert fast.options.bf16 is bf16_native(device) and exact.options.bf16 is False
    assert (exact.probe is not None) == (role == "main" and "probe" in demo_manifest())
    ref, got = exact.analyze(case), fast.analyze(case)

    dp = np.abs(got.probabilities - ref.probabilities)
    assert dp.max() <= FAST_TOLERANCE, dp.max()
    if not fast.options.bf16:  # fp32 either way: only the order of the sums differs
        assert dp.max() <= 1e-4
    if ref.probe_scores is not None:  # the same places (an fp32 map), the probe in bf16
        assert np.abs(got.probe_scores - ref.probe_scores).max() <= PROBE_BF16_TOLERANCE
    # Only a prediction within the tolerance of the threshold may change sides.
    near = np.abs(ref.probabilities - 0.5) <= FAST_TOLERANCE
    flipped = (got.probabilities >= 0.5) != (ref.probabilities >= 0.5)
    assert not (flipped & ~near).any()
    # At a threshold no reference probability lies within the measured |Δp| of, with a
    # second of predictions above it, no decision may change: the same events, frame for frame.
    threshold, margin = clear_threshold(ref.probabilities, runs=10)
    assert margin > dp.max(), (threshold, margin, dp.max())
    # (The analysis's own post-processing, at that threshold, on both paths' probabilities.)
    events = []
    for r in (ref, got):
        decisions = smooth_decisions(r.probabilities, r.timeline.rate_hz, threshold, "none", 0)
        events.append(find_events(r.probabilities, decisions, r.timeline))
    assert events[0]
    assert [(e.start_frame, e.end_frame) for e in events[1]] == [
        (e.start_frame, e.end_frame) for e in events[0]]
    # The key frame (the event's highest probability) may move only to an instant whose
    # reference probability ties the reference peak within the measured |Δp| (bf16 on a CPU
    # with AVX512-BF16 moved one from frame 55 to 53, both near 1).
    instant = {int(f) + 1: i for i, f in enumerate(ref.timeline.frames)}
    for e_ref, e_got in zip(events[0], events[1], strict=True):
        tie = ref.probabilities[instant[e_ref.key_frame]] - ref.probabilities[
            instant[e_got.key_frame]]
        assert e_got.key_frame == e_ref.key_frame or 0 <= tie <= 2 * dp.max(), (
            e_ref.key_frame, e_got.key_frame, tie, dp.max())


def test_the_probe_looks_at_the_same_places_under_the_switch() -> None:
    """With bf16 maps, two close peaks of this case's map swapped places and the probe's score
    at one instant moved by 0.044 (session 29); its places now come from an fp32 map."""
    from amagi_plugin.synth.render import Renderer
    from amagi_plugin.synth.scene import sample_scene

    if "probe" not in demo_manifest():
        pytest.skip("the bundled demo model has no neighbourhood probe")
    scene = sample_scene(13, width=160, height=128, fps=15, duration_s=5, ranges="train")
    video = ArrayVideo(np.stack([f.rgb for f in Renderer(scene).frames()]), 15.0)
    ref = _demo_analyzer("main", AnalysisOptions()).analyze(video)
    got = _demo_analyzer("main", AnalysisOptions(fast=True)).analyze(video)
    assert np.abs(got.probe_scores - ref.probe_scores).max() <= PROBE_BF16_TOLERANCE


# -- a real encoded video, larger than the network's input -----------------------------------------

class Recording:
    """A video that records the keyword arguments of each ``frames()`` call."""

    def __init__(self, video) -> None:
        self._video, self.calls = video, []
        self.frame_count, self.fps = video.frame_count, video.fps

    def frames(self, *args, **kw):
        self.calls.append(kw)
        return self._video.frames(*args, **kw)


@pytest.fixture(scope="module")
def encoded_case(tmp_path_factory):
    """The 5 s case rendered at 320x256 (twice the demo's input) as 15 fps H.264."""
    from amagi_plugin.synth.render import Renderer
    from amagi_plugin.synth.scene import sample_scene
    from dicom_io.encode import write_video_dicom

    scene = sample_scene(3, width=320, height=256, fps=15, duration_s=5, ranges="train")
    path = tmp_path_factory.mktemp("fast") / "case.dcm"
    write_video_dicom((f.rgb for f in Renderer(scene).frames()), path, fps=15.0, crf=23)
    return path


@pytest.mark.parametrize("role", ["main", "baseline"])
def test_fast_path_on_an_encoded_video_within_tolerance(encoded_case, role: str) -> None:
    from dicom_io.video import open_video

    exact = BleedingAnalyzer.for_model(_demo(role), AnalysisOptions())
    fast = BleedingAnalyzer.for_model(_demo(role), AnalysisOptions(fast=True))
    ref, got = exact.analyze(open_video(encoded_case)), fast.analyze(open_video(encoded_case))
    dp = np.abs(got.probabilities - ref.probabilities)
    assert dp.max() <= FAST_TOLERANCE, dp.max()
    near = np.abs(ref.probabilities - 0.5) <= FAST_TOLERANCE
    flipped = (got.probabilities >= 0.5) != (ref.probabilities >= 0.5)
    assert not (flipped & ~near).any()
    # key frames (key images, SEG masks) are decoded again at full size, exactly
    video = open_video(encoded_case)
    for number, rgb in got.key_frames.items():
        assert rgb.shape == (256, 320, 3)
        assert np.array_equal(rgb, next(video.frames(number - 1, number))[2])
        if number in got.masks:
            assert got.masks[number].shape == (256, 320)
    if role == "main":
        assert got.key_frames and got.masks


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_with_a_temporal_segmenter(case, device: str) -> None:
    """amagi_tiny_tg (random weights): its 5-frame segmentation input survives the fast
    path's channels-last layout; fp32 gives the exact path's numbers up to float rounding."""
    from models import build_model

    torch.manual_seed(5)
    model = build_model("amagi_tiny_tg").eval()
    twin = copy.deepcopy(model)  # the fast path changes its model's layout in place
    exact = BleedingAnalyzer.for_model(model, AnalysisOptions(device=device, threshold=0.01))
    fast = BleedingAnalyzer.for_model(twin, AnalysisOptions(device=device, fast=True,
                                                            threshold=0.01))
    ref, got = exact.analyze(case), fast.analyze(case)
    tol = FAST_TOLERANCE if fast.options.bf16 else 1e-4
    assert np.abs(got.probabilities - ref.probabilities).max() <= tol
    assert ref.events and len(got.masks) == len(ref.masks) == len(ref.events)  # threshold 0.01
    # (a near-flat random net's key frame may move; its mask is the exact path's mask)
    for k, mask in got.masks.items():
        want = exact.segment_frames({k: got.key_frames[k]}, case)[k]
        assert (mask == want).mean() > 0.99
    frames = list(range(0, case.frame_count, 7))
    a, b = exact.guidance_areas(case, frames), fast.guidance_areas(case, frames)
    assert not np.isnan(a).any() and np.allclose(a, b, atol=0.02)


def test_exact_path_is_every_frame_converted_by_pyav(encoded_case) -> None:
    """The exact path analyses the frames PyAV itself converts, however it decodes them."""
    from dicom_io.video import open_video

    video = open_video(encoded_case)
    with video.decoder._open() as (container, stream):
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    analyzer = BleedingAnalyzer.for_model(_demo("main"), AnalysisOptions())
    recorded = Recording(video)
    got = analyzer.analyze(recorded)
    assert recorded.calls[0]["wanted"]  # only the clips' frames converted
    want = analyzer.analyze(ArrayVideo(frames, video.fps))
    assert np.array_equal(got.probabilities, want.probabilities)
    assert got.key_frames.keys() == want.key_frames.keys() and all(
        np.array_equal(got.key_frames[k], want.key_frames[k]) for k in got.key_frames)


def test_switch_off_is_the_exact_path() -> None:
    analyzer = BleedingAnalyzer.for_model(_demo("main"), AnalysisOptions())
    assert analyzer.fast is None and analyzer.clip_transform is analyzer.transform
    assert not analyzer.inferer.channels_last and not analyzer.options.bf16
    assert all(p.is_contiguous() for p in analyzer.model.parameters())


def test_switch_on_puts_the_network_in_channels_last() -> None:
    analyzer = BleedingAnalyzer.for_model(_demo("main"), AnalysisOptions(fast=True))
    weights = [p for p in analyzer.model.parameters() if p.dim() in (4, 5)]
    assert weights and all(
        p.is_contiguous(memory_format=torch.channels_last_3d if p.dim() == 5
                        else torch.channels_last) for p in weights)
    assert analyzer.inferer.channels_last


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(128, 160), (127, 161), (480, 640), (100, 90), (224, 224)])
def test_device_transform_from_uint8_equals_the_monai_transform(shape, device: str) -> None:
    """The same arithmetic, up to float rounding; on a CPU the frame is resized as uint8,
    so up to the rounding of the resized frame to whole grey levels."""
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    grey_levels = 1.0 if device == "cpu" and shape != (128, 160) else 1e-4 * AUTHORS_STD[2]
    std = torch.tensor(AUTHORS_STD).view(3, 1, 1)

    def check(frame: np.ndarray) -> None:
        reference = torch.as_tensor(clip_frame_transform(128)(frame)).as_subclass(torch.Tensor)
        got = device_frame_transform(128, device=device)(frame)
        assert got.device.type == device and got.dtype == torch.float32
        assert got.shape == reference.shape == (3, 128, 128)
        assert ((got.cpu() - reference) * std).abs().max() <= grey_levels

    check(frame)
    check(frame[:, ::-1])  # a decoder's non-contiguous view goes through too
    with pytest.raises(ValueError, match="RGB frame"):
        device_frame_transform(128, device=device)(frame[..., :2])


@pytest.mark.parametrize("shape", [(480, 640), (720, 1280), (127, 161), (100, 90)])
def test_short_side_resize_in_uint8_and_in_float(shape) -> None:
    """uint8 (the fast path on a CPU): torch's uint8 kernel, within a grey level of the float
    resize; float (the exact path): exactly the antialiased bilinear interpolation."""
    frame = torch.as_tensor(np.random.default_rng(1).integers(0, 256, (*shape, 3), np.uint8))
    img = frame.permute(2, 0, 1)
    exact = ResizeShortSide(128)(img)
    want = torch.nn.functional.interpolate(img[None].float(), size=tuple(exact.shape[-2:]),
                                           mode="bilinear", align_corners=False,
                                           antialias=True)[0]
    assert exact.dtype == torch.float32 and torch.equal(exact, want)
    small = resize_short_side(img, 128)
    assert small.dtype == torch.uint8 and small.shape == exact.shape and min(small.shape[1:]) == 128
    assert (small.float() - exact).abs().max() <= 1.0
    assert resize_short_side(exact, 128) is exact  # the right size already: nothing done


# -- configuration: the switch, the devices --------------------------------------------------

def test_fast_is_off_by_default_and_devices_empty(tmp_path) -> None:
    cfg = load_config(environ={}, cwd=tmp_path)
    assert cfg.model.fast is False and cfg.worker.devices == []
    cfg = load_config(environ={"AMAGI_MODEL_FAST": "true", "AMAGI_WORKER_DEVICES": "cpu, cuda:1"},
                      cwd=tmp_path)
    assert cfg.model.fast is True and cfg.worker.devices == ["cpu", "cuda:1"]


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:", "CPU", "cuda:0,tpu"])
def test_bad_device_strings_name_the_key(tmp_path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={}, cwd=tmp_path, overrides={"worker.devices": value})
    msg = str(e.value)
    assert msg.startswith("invalid value for worker.devices (command line)")
    assert "is not a device: use cpu, cuda or cuda:N" in msg and "\n" not in msg


def test_missing_cuda_device_is_named(monkeypatch) -> None:
    check_devices_available(["cpu"])  # always there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^configured device cuda is not available: this "
                       r"host has 0 CUDA devices \(worker.devices\)$"):
        check_devices_available(["cpu", "cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_devices_available(["cuda", "cuda:0"])
    with pytest.raises(ConfigError, match=r"^configured device cuda:3 is not available: this "
                       r"host has 1 CUDA device \(worker.devices\)$"):
        check_devices_available(["cuda:0", "cuda:3"])


def test_serve_refuses_a_missing_device_in_one_line(run_cli, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = run_cli("serve", "--devices", "cpu,cuda:3", "--storage-var-dir", str(tmp_path / "var"))
    assert r.code == 2
    assert r.stderr.strip() == ("amagi: error: configured device cuda:3 is not available: this "
                                "host has 0 CUDA devices (worker.devices)")


# -- the flag reaches AnalysisOptions ----------------------------------------------------------

class _Stop(InputError):
    pass


@pytest.fixture
def captured(monkeypatch):
    """What ``amagi process`` and ``amagi serve`` hand on, instead of running them."""
    seen: dict = {}

    def process_video(source, out, analyzer, spec, **kw):
        seen["analyzers"] = [analyzer]
        raise _Stop("captured")

    class FakeService:
        def __init__(self, cfg, analyzers, spec, environ=None) -> None:
            seen["analyzers"], seen["cfg"] = analyzers, cfg

        def serve_forever(self) -> None:
            pass

    monkeypatch.setattr("amagi_plugin.process.process_video", process_video)
    monkeypatch.setattr("amagi_plugin.service.app.Service", FakeService)
    monkeypatch.setattr("amagi_plugin.fastpath.device_batch_size", lambda device, default: 32)
    return seen


@pytest.mark.parametrize("fast", [False, True])
def test_process_flag_reaches_analysis_options(run_cli, captured, tmp_path, fast) -> None:
    (tmp_path / "video.dcm").write_bytes(b"")
    r = run_cli("process", "video.dcm", *(["--fast"] if fast else []))
    assert r.code == 3 and "captured" in r.stderr
    (analyzer,) = captured["analyzers"]
    assert analyzer.options.fast is fast and (analyzer.fast is not None) is fast
    # with the switch, the batch comes from the device unless the user set one
    assert analyzer.options.batch_size == (32 if fast else 8)
    run_cli("process", "video.dcm", "--batch-size", "4", *(["--fast"] if fast else []))
    assert captured["analyzers"][0].options.batch_size == 4


def test_serve_flag_and_devices_reach_the_workers(run_cli, captured, tmp_path) -> None:
    var = str(tmp_path / "var")
    assert run_cli("serve", "--storage-var-dir", var).code == 0
    (analyzer,) = captured["analyzers"]
    assert analyzer.options.fast is False and analyzer.options.device == "cpu"

    assert run_cli("serve", "--fast", "--devices", "cpu,cpu", "--storage-var-dir", var).code == 0
    first, second = captured["analyzers"]
    assert first is not second and first.model is not second.model  # a model per device
    assert all(a.options.fast and a.options.batch_size == 32 for a in (first, second))


def test_service_starts_worker_count_workers_per_device(tmp_path) -> None:
    from amagi_plugin.modelspec import ModelSpec
    from amagi_plugin.service.app import Service
    from tests.amagi_plugin.serve_support import free_port

    cfg = load_config(environ={}, cwd=tmp_path, overrides={
        "storage.var_dir": str(tmp_path / "var"), "storage.reserve_mb": "1",
        "listener.port": str(free_port()), "listener.bind_address": "127.0.0.1",
        "worker.count": "2"})
    from types import SimpleNamespace

    # stand-ins: a worker registers its analyzer's device and never runs it here (no jobs)
    analyzers = [SimpleNamespace(options=SimpleNamespace(device=f"cpu:{i}")) for i in (0, 1)]
    svc = Service(cfg, analyzers, ModelSpec("test", "amagi_tiny", None, "user", "0"))  # type: ignore[arg-type]
    svc.start()
    try:
        assert [w.analyzer for w in svc.workers] == [analyzers[0], analyzers[1]] * 2
    finally:
        svc.stop()


def test_without_native_bf16_the_switch_keeps_fp32(case, monkeypatch, caplog) -> None:
    monkeypatch.setattr("amagi_plugin.fastpath.bf16_native", lambda device: False)
    with caplog.at_level("INFO", logger="amagi_plugin.fastpath"):
        fast = BleedingAnalyzer.for_model(_demo("main"), AnalysisOptions(fast=True))
    assert fast.options.bf16 is False and "arithmetic stays fp32" in caplog.text
    ref = BleedingAnalyzer.for_model(_demo("main"), AnalysisOptions()).analyze(case)
    got = fast.analyze(case)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, rtol=0, atol=1e-4)
    assert [(e.start_frame, e.end_frame) for e in got.events] == \
        [(e.start_frame, e.end_frame) for e in ref.events]
