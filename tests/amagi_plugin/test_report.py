"""The report PDF (text read back with poppler's pdftotext, pages rendered with pdftoppm),
the timeline PNG layout, and the algorithm's Device UID following the checkpoint's bytes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom import Dataset

from amagi_plugin.analysis import Timeline, find_events
from amagi_plugin.modelspec import ModelSpec
from amagi_plugin.outputs import timeline_figure, write_timeline_png
from amagi_plugin.pipeline import AnalysisResult
from amagi_plugin.process import algorithm_info
from amagi_plugin.report import (
    ReportContent,
    ReportError,
    header_lines,
    render_report_pdf,
)
from amagi_plugin.schedule import ClipSchedule
from dicom_io.results import DEMO_DISCLAIMER, AlgorithmInfo, CaseIndex

FPS, SECONDS = 30.0, 60.0
DEMO = AlgorithmInfo("amagi-demo-amagi_tiny", "3", "demo-synthetic", "tiny AMAGI on synthetic video")
AUTHORS = AlgorithmInfo("amagi_sf152", "split1_SF152", "authors")


def _result(n_events: int, size=(90, 160)) -> AnalysisResult:
    """A 60 s, 30 fps analysis at 10 Hz with ``n_events`` 1 s events, key frames and masks."""
    schedule = ClipSchedule(frame_count=int(SECONDS * FPS), fps=FPS)
    times = np.arange(0, SECONDS, 0.1)
    timeline = Timeline(times_s=times, frames=np.round(times * FPS).astype(int), rate_hz=10.0,
                        duration_s=SECONDS)
    probs = np.full(times.size, 0.1)
    for k in range(n_events):
        start = 2.0 + k * (SECONDS - 4) / n_events
        probs[(times >= start) & (times < start + 1.0)] = 0.9 - 0.01 * k
    decisions = probs > 0.5
    events = find_events(probs, decisions, timeline)
    frames, masks = {}, {}
    for e in events:
        frames[e.key_frame] = np.full((*size, 3), (150, 70, 60), np.uint8)
        mask = np.zeros(size, bool)
        mask[30:60, 60:110] = True
        masks[e.key_frame] = mask
    return AnalysisResult(schedule, timeline, probs, decisions.astype(int), events,
                          CaseIndex.from_events(events, SECONDS), frames, masks)


def _header() -> list[tuple[str, str]]:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = \
        "Doe^Jane", "P-0042", "19700102", "F"
    ds.StudyDate, ds.AccessionNumber, ds.StudyDescription = "20260105", "ACC-7", "Chole"
    return header_lines(ds, "1.2.3.4.5", SECONDS, FPS)


def _pdf(tmp_path: Path, n_events: int, algorithm: AlgorithmInfo = DEMO) -> Path:
    result = _result(n_events)
    assert len(result.events) == n_events
    path = tmp_path / f"report_{n_events}.pdf"
    path.write_bytes(render_report_pdf(ReportContent.from_result(result, algorithm, 0.5,
                                                                 _header())))
    return path


def _text(path: Path, page: int | None = None) -> str:
    pages = ["-f", str(page), "-l", str(page)] if page else []
    out = subprocess.run(["pdftotext", "-layout", *pages, str(path), "-"], check=True,
                         capture_output=True, text=True).stdout
    return " ".join(out.split())


def _pages(path: Path) -> int:
    info = subprocess.run(["pdfinfo", str(path)], check=True, capture_output=True,
                          text=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)$", info, re.M).group(1))


def _render(path: Path, tmp_path: Path, page: int = 1) -> np.ndarray:
    prefix = tmp_path / f"{path.stem}_p{page}"
    subprocess.run(["pdftoppm", "-r", "60", "-png", "-f", str(page), "-l", str(page),
                    "-singlefile", str(path), str(prefix)], check=True)
    return np.asarray(Image.open(f"{prefix}.png").convert("RGB")).astype(int)


def _near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return (np.abs(img - np.array(rgb)).sum(axis=2) < tol)


def test_tools_are_installed():
    for tool in ("pdftotext", "pdftoppm", "pdfinfo"):
        assert shutil.which(tool), f"{tool} missing: make test installs Debian poppler-utils"


@pytest.mark.integration
def test_one_page_report_text(tmp_path):
    path = _pdf(tmp_path, 3)
    assert _pages(path) == 1
    text = _text(path)
    assert DEMO_DISCLAIMER.upper() in text
    assert "Doe, Jane" in text and "P-0042" in text and "1970-01-02 / F" in text
    assert "2026-01-05 · Chole · accession ACC-7" in text
    assert "3 bleeding events, 3.0 s in total (5 % of 60.0 s)" in text
    for i, e in enumerate(_result(3).events, 1):  # one table row per event
        row = (f"{i} {e.start_s:.1f} {e.end_s:.1f} {e.duration_s:.1f} "
               f"{e.peak_probability:.2f} {e.key_frame}")
        assert row in text, row
    assert f"weights: demo-synthetic; Device UID {DEMO.device_uid}" in text


@pytest.mark.integration
def test_many_events_continue_on_more_pages_with_the_notice(tmp_path):
    path = _pdf(tmp_path, 20)
    pages = _pages(path)
    assert pages == 1 + 1 + 2  # table rows 9-20, then key frames 4-18 and 19-20
    text = _text(path)
    for i in range(1, 21):
        assert re.search(rf"(^| ){i} \d+\.\d \d+\.\d 1\.0 0\.\d\d \d+ ", text), i
    for page in range(1, pages + 1):
        assert DEMO_DISCLAIMER.upper() in _text(path, page), page
        assert f"page {page}/{pages}" in _text(path, page)
    assert "Events (continued, 9-20 of 20)" in _text(path, 2)


@pytest.mark.integration
def test_authors_model_has_no_notice_and_no_events_says_so(tmp_path):
    path = _pdf(tmp_path, 0, AUTHORS)
    text = _text(path)
    assert "not for clinical use" not in text.lower()
    assert "No active bleeding detected in 60.0 s of video." in text
    assert "weights: authors" in text


@pytest.mark.integration
def test_rendered_page_shows_timeline_events_and_masks(tmp_path):
    img = _render(_pdf(tmp_path, 3), tmp_path)
    height = img.shape[0]
    assert img.std() > 20  # not blank
    # the timeline (curve colour #1f3b73) lies in the upper half, with three shaded events
    curve = np.argwhere(_near(img, (0x1F, 0x3B, 0x73), 60))
    assert len(curve) > 200 and 0.25 < np.median(curve[:, 0]) / height < 0.5
    shaded = _near(img, (245, 201, 201), 25)  # #d62728 at 25 % on white
    columns = np.flatnonzero(shaded.sum(axis=0) > 10)
    assert len(np.split(columns, np.flatnonzero(np.diff(columns) > 3) + 1)) == 3  # gridlines
    # the key frames (their colour) with the mask outlined in green, in the lower half
    frames = np.argwhere(_near(img, (150, 70, 60), 30))
    assert len(frames) > 1000 and np.median(frames[:, 0]) / height > 0.55
    assert _near(img, (0, 224, 0), 120).sum() > 50
    demo_banner = _near(img[: height // 10], (0xA0, 0, 0), 30).sum()
    assert demo_banner > 500


def test_report_content_is_checked():
    result = _result(2)
    with pytest.raises(ReportError, match="index must be a CaseIndex counting the 1 events"):
        ReportContent(result.timeline.times_s, result.probabilities, result.events[:1],
                      result.index, SECONDS, 0.5, DEMO)
    with pytest.raises(ReportError, match="must be 1-D of one length"):
        ReportContent(result.timeline.times_s[:-1], result.probabilities, result.events,
                      result.index, SECONDS, 0.5, DEMO)
    with pytest.raises(ReportError, match="threshold must be in"):
        ReportContent(result.timeline.times_s, result.probabilities, result.events,
                      result.index, SECONDS, 2.0, DEMO)
    with pytest.raises(ReportError, match=r"hold_threshold must be in \[0, threshold\]"):
        ReportContent(result.timeline.times_s, result.probabilities, result.events,
                      result.index, SECONDS, 0.5, DEMO, hold_threshold=0.6)


def _overlap(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


@pytest.mark.parametrize(("weights", "hold"), [("demo-synthetic", 0.3), ("user", None)])
def test_timeline_headline_notice_legend_and_plot_do_not_overlap(tmp_path, weights, hold):
    spec = ModelSpec("amagi-demo-amagi_tiny", "amagi_tiny", None, weights, "3")
    long_title = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678901"
    fig = timeline_figure(_result(3), spec, title=long_title, hold_threshold=hold)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert ("events held down to 0.3" in legend) == (hold is not None)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    head, note = fig.texts
    assert long_title in head.get_text()
    assert (DEMO_DISCLAIMER in note.get_text()) == (weights == "demo-synthetic")
    ax = fig.axes[0]
    boxes = {"headline": head.get_window_extent(renderer),
             "notice": note.get_window_extent(renderer),
             "legend": fig.legends[0].get_window_extent(renderer),
             "plot": ax.get_window_extent(renderer),
             "x label": ax.xaxis.label.get_window_extent(renderer),
             "y label": ax.yaxis.label.get_window_extent(renderer)}
    ticks = [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    boxes.update({f"tick {t.get_text()}": t.get_window_extent(renderer) for t in ticks})
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if not (a.startswith("tick") and b.startswith("tick")):
                assert not _overlap(boxes[a], boxes[b]), (a, b, boxes[a], boxes[b])
    width, height = fig.bbox.width, fig.bbox.height
    for name, box in boxes.items():  # nothing cut off
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, name
    path = tmp_path / "timeline.png"
    write_timeline_png(path, _result(3), spec, title=long_title)
    assert Image.open(path).size == (1200, 360)


def test_retrained_checkpoint_gives_another_device_uid(tmp_path, tiny_checkpoint):
    """Same bytes elsewhere: same Device UID; retrained weights, same name: another."""
    copy = tmp_path / "copy" / tiny_checkpoint.name
    copy.parent.mkdir()
    shutil.copyfile(tiny_checkpoint, copy)
    state = torch.load(tiny_checkpoint, weights_only=True)
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = state["state_dict"][first] + 1e-3
    retrained = tmp_path / "retrained" / tiny_checkpoint.name
    retrained.parent.mkdir()
    torch.save(state, retrained)

    def uid(path: Path) -> str:
        return algorithm_info(ModelSpec("amagi_tiny", "amagi_tiny", path, "user",
                                        path.stem)).device_uid

    assert uid(copy) == uid(tiny_checkpoint)
    assert uid(retrained) != uid(tiny_checkpoint)


@pytest.mark.integration
def test_process_writes_the_report_as_pdf_and_dicom(run_cli, tmp_path, tiny_checkpoint):
    """``amagi process``: report.pdf and its Encapsulated PDF (listed by the KOS) show the
    events of summary.json; every object names the checkpoint's Device UID."""
    import json

    from pydicom import dcmread

    from dicom_io._writer_common import find_algorithm_equipment
    from dicom_io.encode import write_video_dicom
    from dicom_io.pdf import read_encapsulated_pdf
    from dicom_io.results import weights_device_uid
    from dicom_io.sopclasses import ENCAPSULATED_PDF
    from dicom_io.validate import run_dciodvfy
    from tests.amagi_plugin.test_process import KNOWN_SR_WARNINGS, _frames

    video = tmp_path / "video.dcm"
    write_video_dicom(_frames(), video, fps=30)
    out = tmp_path / "out"
    r = run_cli("process", str(video), "-od", str(out), "--model", "amagi_tiny",
                "--checkpoint", str(tiny_checkpoint), "--no-progress",
                "--set", "analysis.threshold=1e-6")
    assert r.code == 0, r.stderr
    doc = json.loads((out / "summary.json").read_text())
    text = _text(out / "report.pdf")
    assert doc["event_count"] == 1 and "1 bleeding event, 2.0 s in total" in text
    e = doc["events"][0]
    assert f"1 {e['start_s']:.1f} {e['end_s']:.1f} {e['duration_s']:.1f}" in text
    assert doc["sop_instance_uid"] in text
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<figure id="event-') == 1 and 'class="preview"' in page
    assert "http://" not in page and "https://" not in page

    uid = weights_device_uid(tiny_checkpoint)
    datasets = [dcmread(p) for p in (out / "dicom").glob("*.dcm")]
    assert {ds.Modality for ds in datasets} == {"SR", "SEG", "ES", "KO", "DOC"}
    for ds in datasets:
        assert find_algorithm_equipment(ds).DeviceUID == uid, ds.Modality
    pdf = next(ds for ds in datasets if ds.Modality == "DOC")
    path = out / "dicom" / f"{pdf.SOPInstanceUID}.dcm"
    assert read_encapsulated_pdf(path) == (out / "report.pdf").read_bytes()
    v = run_dciodvfy(path)
    assert v.errors == [] and [w for w in v.warnings
                               if not any(k in w for k in KNOWN_SR_WARNINGS)] == []
    kos = next(ds for ds in datasets if ds.Modality == "KO")
    listed = [(c.ReferencedSOPSequence[0].ReferencedSOPClassUID,
               c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
              for c in kos.ContentSequence if c.ValueType == "COMPOSITE"]
    assert listed == [(ENCAPSULATED_PDF, pdf.SOPInstanceUID)]
