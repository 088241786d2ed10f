"""scripts/model/other_renderer.py: a second renderer whose still blood and active bleeding
look alike in one frame and differ over time, drawn the same for a seed, scored as the
evaluation scores events; its active-bleeding masks lie where the bleeding is drawn, and
its cases written as a set are read by scripts/model/probe_at_source.py."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from tests.models._scripts import load_script

SCRIPT = "scripts/model/other_renderer.py"


@pytest.fixture(scope="module")
def r():
    return load_script(SCRIPT)


def _grid(b, reach: float = 60.0):
    ys, xs = torch.meshgrid(torch.arange(b.cy - reach, b.cy + reach),
                            torch.arange(b.cx - reach, b.cx + reach), indexing="ij")
    return ys, xs


def test_a_seed_draws_the_same_video_and_another_seed_another(r) -> None:
    def first_frames(seed: int) -> list[np.ndarray]:
        case = r.make_case("c", seed, 30.0, (160, 128), True)
        return list(itertools.islice(r.render(case), 3))

    a, b, c = first_frames(5), first_frames(5), first_frames(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (128, 160, 3) and a[0].dtype == np.uint8


@pytest.mark.parametrize("seconds", [20.0, 60.0, 180.0])
def test_the_schedule_keeps_events_apart_inside_the_video(r, seconds: float) -> None:
    for seed in range(20):
        events = r._schedule(np.random.default_rng(seed), seconds)
        assert 3 <= len(events) <= 4 if seconds >= 60 else 1 <= len(events) <= 2
        assert events[0][0] >= 3.0 and events[-1][1] <= seconds
        assert all(4.0 <= e - s <= 10.0 for s, e in events)
        for (_s, e), (s2, _e2) in itertools.pairwise(events):
            assert s2 - e >= 5.0


@pytest.mark.parametrize("form", ["ooze", "stream", "spurt", "tiny"])
def test_active_blood_grows_and_flows_then_stays_still(r, form: str) -> None:
    """The premise: while active, the blood's area grows and its texture moves; after its
    end neither changes (what a bleeding leaves is the still look-alike)."""
    case = r.make_case("c", 11, 30.0, (640, 512), True)
    b = case.bleeds[0]
    b.form = form
    ys, xs = _grid(b)
    mid = (b.start + b.end) / 2
    area = [b.alpha_and_shade(ys, xs, t)[0].sum().item() for t in (b.start + 0.5, mid, b.end)]
    assert area[0] < area[1] < area[2]
    a1, s1 = b.alpha_and_shade(ys, xs, mid)
    a2, s2 = b.alpha_and_shade(ys, xs, mid + 0.2)
    inside = (a1 > 0.99) & (a2 > 0.99)
    assert inside.sum() > 0
    assert (s1 - s2)[inside].abs().mean() > 0.02  # the texture moves with the blood
    after = [b.alpha_and_shade(ys, xs, t) for t in (b.end + 1.0, b.end + 7.3)]
    assert torch.equal(after[0][0], after[1][0]) and torch.equal(after[0][1], after[1][1])


def test_still_and_active_blood_share_one_frame_look(r) -> None:
    """In one frame a still pool and an active bleed have the same colour statistics:
    same colour, the same shading model, to within what the texture draws."""
    case = r.make_case("c", 3, 30.0, (640, 512), True)
    b = case.bleeds[0]
    ys, xs = _grid(b)
    alpha, shade = b.alpha_and_shade(ys, xs, (b.start + b.end) / 2)
    active = (case.blood[:, None, None] * shade)[:, alpha > 0.99]
    still_alpha, still_shade = b.alpha_and_shade(ys, xs, b.end + 5)
    still = (case.blood[:, None, None] * still_shade)[:, still_alpha > 0.99]
    assert torch.allclose(active.mean(1), still.mean(1), atol=0.04)
    assert abs(active.std(1).mean() - still.std(1).mean()) < 0.04


def test_the_active_mask_lies_where_the_bleeding_is_drawn(r) -> None:
    """Checked against the pixels themselves: the same case (its canvas made one pale
    colour, so that no still pool hides blood drawn over it) drawn without its bleeding
    differs from it exactly around the mask (the same camera, instruments and noise).
    Every strongly changed pixel lies within 1 px of the mask, and every mask pixel within
    1 px of a changed one; outside the bleeding's time the mask is empty."""
    import dataclasses

    def binary_dilation(m: np.ndarray) -> np.ndarray:  # by one pixel, 8-connected
        t = torch.from_numpy(m).float()[None, None]
        return torch.nn.functional.max_pool2d(t, 3, 1, 1)[0, 0].bool().numpy()

    case = r.make_case("c", 0, 20.0, (160, 128), True)
    pale = torch.tensor([0.85, 0.8, 0.65])[:, None, None].expand_as(case.canvas).clone()
    case = dataclasses.replace(case, canvas=pale)
    b = case.bleeds[0]
    frames = [round(t * r.FPS) for t in (b.start + 1.0, (b.start + b.end) / 2, b.end - 0.1)]
    drawn = list(itertools.islice(r.render(case), frames[-1] + 1))
    plain = list(itertools.islice(r.render(dataclasses.replace(case, bleeds=[])),
                                  frames[-1] + 1))
    for k in frames:
        mask = r.active_mask(case, k)
        changed = np.abs(drawn[k].astype(int) - plain[k].astype(int)).max(2) > 40
        assert mask.sum() >= 5 and changed.sum() >= 5
        assert not (changed & ~binary_dilation(mask)).any(), k
        assert not (mask & ~binary_dilation(changed)).any(), k
    assert not r.active_mask(case, round((b.start - 0.5) * r.FPS)).any()
    assert not r.active_mask(case, round((b.end + 0.5) * r.FPS)).any()
    grown = [r.active_mask(case, k).sum() for k in frames]
    assert grown[0] < grown[1] < grown[2]  # it grows while active


def test_a_case_set_lists_one_mask_a_second_and_links_the_video(r, tmp_path) -> None:
    import json

    from PIL import Image

    case = r.make_case("bleed00", 0, 20.0, (160, 128), True)
    video = tmp_path / "bleed00.mp4"
    video.write_bytes(b"not decoded here")
    folder = r.write_case_set(case, video, tmp_path / "set")
    labels = json.loads((folder / "labels.json").read_text())
    assert [m["frame"] for m in labels["masks"]] == list(range(0, 600, 30))
    assert (folder / "video.mp4").resolve() == video.resolve()
    assert [(e["start_s"], e["end_s"]) for e in labels["events"]] == case.truth()
    for e in labels["events"]:  # the frames whose time lies in [start, end)
        inside = [k for k in range(600) if e["start_s"] <= k / r.FPS < e["end_s"]]
        assert (e["start_frame"], e["end_frame"]) == (inside[0], inside[-1] + 1)
    for m in labels["masks"]:
        saved = np.asarray(Image.open(folder / m["mask"])) > 0
        assert np.array_equal(saved, r.active_mask(case, m["frame"]))
    assert sum(bool(np.asarray(Image.open(folder / m["mask"])).any())
               for m in labels["masks"]) >= 3


@pytest.mark.slow
def test_probe_at_source_reads_another_renderers_cases(r, tmp_path, capsys) -> None:
    """``--masks``: the cases written beside the videos are what
    ``scripts/model/probe_at_source.py`` reads (its video an MP4, not DICOM)."""
    from tests.models._scripts import load_script

    assert r.main([str(tmp_path / "out"), "--cases", "1", "--still-cases", "0",
                   "--seconds", "20", "--size", "160x128", "--render-only",
                   "--masks", str(tmp_path / "set")]) == 0
    capsys.readouterr()
    source = load_script("scripts/model/probe_at_source.py")
    assert source.main([str(tmp_path / "set"), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    active = sum(bool(r.active_mask(r.make_case("bleed00", 0, 20.0, (160, 128), True),
                                    k).any()) for k in range(0, 600, 30))
    assert any(line.startswith(f"| all active | {active} |") for line in lines), lines
    forms = {b.form for b in r.make_case("bleed00", 0, 20.0, (160, 128), True).bleeds}
    assert any(line.startswith("|") and line.split("|")[1].strip() in forms
               for line in lines), lines


def _ooze(r, drawing):
    case = r.make_case("c", 11, 30.0, (640, 512), True, drawing)
    b = case.bleeds[0]
    b.form, b.radius = "ooze", 60.0  # 15 px at the model's scale
    return b


def test_each_drawing_factor_does_what_it_names_and_the_default_is_the_renderers_own(r
                                                                                    ) -> None:
    """``--drawing``: every factor changes the blood in its own way, the scene (places,
    times, sizes) stays the one the seed draws, and the default draws as before (the same
    coverage and shade as a Drawing built field by field from the defaults)."""
    D = r.Drawing
    base = _ooze(r, D())
    ys, xs = _grid(base, 90.0)
    mid = (base.start + base.end) / 2
    times = [base.start + 0.3 * i for i in range(int((base.end - base.start) / 0.3))]

    other = _ooze(r, D(pulse="all"))
    assert other.drawing == D(pulse="all") and torch.equal(other.texture, base.texture)
    assert dataclasses.replace(other, drawing=D(), texture=None) == dataclasses.replace(
        base, texture=None)

    def draw(drawing, t):
        return dataclasses.replace(base, drawing=drawing).alpha_and_shade(ys, xs, t)

    a0, s0 = draw(D(), mid)
    a1, s1 = draw(D.parse("growth=sqrt,rim=hard,texture_gain=0.16,glints=1,texture_speed=1,"
                          "pulse=spurt"), mid)
    assert torch.equal(a0, a1) and torch.equal(s0, s1)
    # a soft rim: many more partly covered pixels
    soft, _ = draw(D(rim="soft"), mid)
    part = ((a0 > 0.05) & (a0 < 0.95)).sum(), ((soft > 0.05) & (soft < 0.95)).sum()
    assert part[1] > 3 * part[0]
    # linear growth: smaller early, the same at the end
    early = base.start + 0.2 * (base.end - base.start)
    assert draw(D(growth="linear"), early)[0].sum() < 0.7 * draw(D(), early)[0].sum()
    assert torch.allclose(draw(D(growth="linear"), base.end)[0], draw(D(), base.end)[0])
    # a still texture: the shade inside the pool stays put while it grows
    _, still_a = draw(D(texture_speed=0.0), mid)
    cover, still_b = draw(D(texture_speed=0.0), mid + 0.2)
    inside = (cover > 0.99) & (draw(D(texture_speed=0.0), mid)[0] > 0.99)
    assert torch.equal(still_a[inside], still_b[inside])
    # gain and glints: the shade's spread, and its peaks
    assert s0[a0 > 0.99].std() < 0.6 * draw(D(texture_gain=0.35), mid)[1][a0 > 0.99].std()
    flat = draw(D(glints=False), mid)[1]
    assert s0.max() > 1.45 and flat.max() < 1 + 0.16 * 3.5
    # pulse=all: the ooze's area swells and falls back about its growth while active
    ratio = [draw(D(pulse="all"), t)[0].sum() / draw(D(), t)[0].sum() for t in times]
    assert max(ratio) - min(ratio) > 0.05
    after = draw(D(pulse="all"), base.end + 1.0), draw(D(), base.end + 1.0)
    assert torch.equal(after[0][0], after[1][0]) and torch.equal(after[0][1], after[1][1])
    for bad in ("pulse=some", "rim", "colour=blue", "texture_gain=x", "glints=2"):
        with pytest.raises(ValueError, match="drawing"):
            D.parse(bad)


def test_a_video_too_short_for_any_bleeding_is_refused(r) -> None:
    with pytest.raises(ValueError, match="fits in 8"):
        r._schedule(np.random.default_rng(0), 8.0)


def test_score_matches_events_as_counted_by_hand(r) -> None:
    truth = {"a": [(10.0, 20.0), (30.0, 34.0)], "b": [(5.0, 9.0)], "s": []}
    pred = {"a": [(11.0, 19.0), (31.5, 40.0), (50.0, 52.0)], "b": [], "s": [(1.0, 3.0)]}
    out = r.score(truth, pred, {"a": 60.0, "b": 60.0, "s": 60.0})
    # a: (11, 19) IoU 0.8, (31.5, 40) IoU 2.5/10 = 0.25, (50, 52) overlaps nothing
    assert (out["found_iou_0.1"], out["found_iou_0.5"], out["true_events"]) == (2, 1, 3)
    assert out["predicted_events"] == 4 and out["f1_iou_0.5"] == pytest.approx(2 / 7)
    # count error: a |3-2|/2, b |0-1|/1; duration error: a |18.5-14|/14, b 4/4
    assert out["count_error"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["duration_error"] == pytest.approx((4.5 / 14 + 1.0) / 2)
    assert out["false_alarms"] == 2 and out["bleeding_free_alarms"] == 1
    assert out["bleeding_free_minutes"] == 1.0


def test_arguments_after_the_double_dash_go_to_amagi_process(r) -> None:
    args = r.parse(["out", "--cases", "2", "--size", "320x256", "--", "--model-dir", "m"])
    assert (args.cases, args.size, args.extra) == (2, (320, 256), ["--model-dir", "m"])


def test_frame_auroc_labels_each_instant_by_the_true_events(r) -> None:
    truth = {"a": [(1.0, 2.0)], "s": []}
    traces = {"a": [(0.5, 0.2), (1.0, 0.9), (1.5, 0.32), (2.0, 0.3)], "s": [(0.0, 0.35)]}
    # positives 0.9, 0.32; negatives 0.2, 0.3 (t = 2 is past the half-open end), 0.35
    assert r.frame_auroc(truth, traces) == pytest.approx(5 / 6)


@pytest.mark.slow
def test_the_bundled_demo_stays_quiet_on_another_renderers_still_blood(r, tmp_path) -> None:
    """Still pools drawn by code the model never trained on, in the bleeding's own look,
    seen through a moving camera with moving instruments: ``amagi process`` with the
    bundled demo reports no event (measured in session 39: highest fused probability
    0.29-0.60 on three such 60 s cases at 640 x 512)."""
    from dicom_io.encode import encode_video

    case = r.make_case("still", 1001, 20.0, (320, 256), False)
    assert not case.bleeds and not case.truth()
    video = tmp_path / "still.mp4"
    encode_video(r.render(case), video, r.FPS, crf=23)
    doc, trace = r.process(video, tmp_path / "out", [])
    assert doc["event_count"] == 0 and doc["events"] == []
    assert len(trace) == 200 and max(p for _t, p in trace) < 0.8
