"""The case report a surgeon reads in any viewer: a PDF drawn with matplotlib.

Page 1 holds the patient/study header, the count and total duration of bleeding, the
timeline (probability over time, events shaded and numbered), the first events of the
table (start, end, duration, peak probability), the first key frames with the bleeding
mask outlined, and the model identification (name, version, weights, Device UID); a demo
model's notice is on every page. Further pages continue the table and the key frames
when there are many events. :func:`draw_timeline` also draws ``timeline.png``.

Times are in seconds from the first frame; frame numbers are 1-based DICOM frame numbers.
No pyplot: figures are plain :class:`matplotlib.figure.Figure` objects (no global state).
"""

from __future__ import annotations

import datetime as _dt
import io
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pydicom import Dataset

from amagi_plugin.analysis import check_hold
from dicom_io.results import MANUFACTURER, AlgorithmInfo, BleedingEvent, CaseIndex

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from amagi_plugin.pipeline import AnalysisResult

A4_INCHES = (8.27, 11.69)
REPORT_TITLE = "Active intraoperative bleeding: AI analysis report"
EVENT_COLOUR = "#d62728"
CURVE_COLOUR = "#1f3b73"
NOTICE_COLOUR = "#a00000"
MASK_COLOUR = "#00e000"
#: Rows of the events table and key frames on page 1, then on each continuation page.
FIRST_PAGE_ROWS, MORE_PAGE_ROWS = 8, 32
FIRST_PAGE_FRAMES, MORE_PAGE_FRAMES = 3, 15
#: Key frames are drawn at most this wide (pixels), to keep the PDF small.
MAX_FRAME_WIDTH = 480
#: Most event numbers written on a timeline (beyond, every k-th event is numbered).
MAX_TIMELINE_LABELS = 40
_ROW_HEIGHT = 0.021  # of the page height: one table row (8 pt text)
_FRAME_ROW_HEIGHT = 0.16  # of the page height: one row of key frames with their titles
_FONT = {"pdf.fonttype": 42, "font.family": "DejaVu Sans"}  # TrueType: pdftotext reads it


class ReportError(ValueError):
    """The report content is invalid (names the field and the value)."""


@dataclass(frozen=True)
class ReportContent:
    """Everything one report shows.

    Parameters
    ----------
    times_s, probabilities : ndarray
        Prediction times in seconds and bleeding probabilities in [0, 1], both ``(P,)``.
    events : sequence of BleedingEvent
        The events, numbered 1..N in start order in the timeline, table and key frames.
    index : CaseIndex
        Count and durations; ``index.event_count == len(events)``.
    duration_s : float
        Duration of the video in seconds (> 0).
    threshold : float
        Decision threshold drawn on the timeline, in [0, 1].
    hold_threshold : float or None
        The hold threshold (hysteresis, :mod:`amagi_plugin.analysis`) drawn beside it, if any.
    algorithm : AlgorithmInfo
        The model (name, version, weights kind, Device UID).
    key_frames : mapping int -> ndarray
        1-based frame number -> RGB uint8 ``(H, W, 3)``; an event without one shows no image.
    masks : mapping int -> ndarray
        1-based frame number -> bool ``(H, W)`` bleeding mask, outlined on its key frame.
    header : list of (str, str)
        Label/value lines of the patient and study header.
    previews : mapping int -> sequence of ndarray
        Key frame number -> RGB uint8 frames of a short preview of that event (the HTML
        report animates them; the PDF does not use them).
    """

    times_s: np.ndarray
    probabilities: np.ndarray
    events: Sequence[BleedingEvent]
    index: CaseIndex
    duration_s: float
    threshold: float
    algorithm: AlgorithmInfo
    key_frames: Mapping[int, np.ndarray] = field(default_factory=dict)
    masks: Mapping[int, np.ndarray] = field(default_factory=dict)
    header: Sequence[tuple[str, str]] = ()
    previews: Mapping[int, Sequence[np.ndarray]] = field(default_factory=dict)
    hold_threshold: float | None = None

    def __post_init__(self) -> None:
        times = np.asarray(self.times_s, float)
        probs = np.asarray(self.probabilities, float)
        if times.ndim != 1 or times.shape != probs.shape:
            raise ReportError(f"times_s and probabilities must be 1-D of one length, got "
                              f"{times.shape} and {probs.shape}")
        if probs.size and (np.nanmin(probs) < 0 or np.nanmax(probs) > 1):
            raise ReportError("probabilities must lie in [0, 1]")
        if not isinstance(self.index, CaseIndex) or self.index.event_count != len(self.events):
            raise ReportError(f"index must be a CaseIndex counting the {len(self.events)} "
                              f"events, got {self.index!r}")
        if any(not isinstance(e, BleedingEvent) for e in self.events):
            raise ReportError("events must be BleedingEvent instances")
        if not isinstance(self.algorithm, AlgorithmInfo):
            raise ReportError(f"algorithm must be an AlgorithmInfo, got {self.algorithm!r}")
        if not (isinstance(self.duration_s, (int, float)) and self.duration_s > 0):
            raise ReportError(f"duration_s must be a number > 0, got {self.duration_s!r}")
        if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1):
            raise ReportError(f"threshold must be in [0, 1], got {self.threshold!r}")
        try:  # the analysis's own check: in (0, 1), not above the threshold
            check_hold(self.threshold, self.hold_threshold)
        except ValueError:
            raise ReportError(f"hold_threshold must be in [0, threshold], got "
                              f"{self.hold_threshold!r}") from None
        put = object.__setattr__
        put(self, "times_s", times)
        put(self, "probabilities", probs)
        put(self, "events", tuple(sorted(self.events, key=lambda e: (e.start_s, e.start_frame))))
        put(self, "header", tuple((str(k), str(v)) for k, v in self.header))

    @classmethod
    def from_result(cls, result: AnalysisResult, algorithm: AlgorithmInfo, threshold: float,
                    header: Sequence[tuple[str, str]] = (),
                    previews: Mapping[int, Sequence[np.ndarray]] | None = None, *,
                    hold_threshold: float | None = None) -> ReportContent:
        """The content of the report of one analysis."""
        return cls(times_s=result.timeline.times_s, probabilities=result.probabilities,
                   events=result.events, index=result.index,
                   duration_s=float(result.schedule.duration_s), threshold=threshold,
                   algorithm=algorithm, key_frames=result.key_frames, masks=result.masks,
                   header=header, previews=previews or {}, hold_threshold=hold_threshold)


def preview_frame_numbers(event: BleedingEvent, count: int = 6) -> list[int]:
    """Up to ``count`` 1-based frame numbers spread evenly over ``event`` (ends included)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ReportError(f"count must be an int >= 1, got {count!r}")
    spread = np.linspace(event.start_frame, event.end_frame, count)
    return sorted({int(f) for f in np.rint(spread)})


def header_lines(source: Dataset | None, source_name: str, duration_s: float,
                 fps: float) -> list[tuple[str, str]]:
    """Patient, study and video lines for the report header.

    Parameters
    ----------
    source : pydicom.Dataset or None
        Header of the analysed DICOM instance; ``None`` for a file without one (MP4).
    source_name : str
        What to call the video: its SOP Instance UID or its file name.
    duration_s, fps : float
        Duration in seconds and frame rate in frames per second.
    """
    lines: list[tuple[str, str]] = []
    if source is not None:
        name = source.get("PatientName")
        lines.append(("Patient", name.family_comma_given() if name else "(no name)"))
        lines.append(("Patient ID", str(source.get("PatientID") or "")))
        lines.append(("Birth date / sex", f"{_date(source.get('PatientBirthDate'))} / "
                                          f"{source.get('PatientSex') or '-'}"))
        lines.append(("Study", " · ".join(v for v in (
            _date(source.get("StudyDate")), str(source.get("StudyDescription") or ""),
            f"accession {source.AccessionNumber}" if source.get("AccessionNumber") else "")
            if v and v != "-") or "-"))
    lines.append(("Video", source_name))
    lines.append(("Duration", f"{duration_s:.1f} s at {fps:.2f} frames/s"))
    return lines


def _date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else "-"


def summary_line(index: CaseIndex) -> str:
    """One sentence: count, total duration and share of the video, longest, first."""
    if index.event_count == 0:
        return f"No active bleeding detected in {index.video_duration_s:.1f} s of video."
    share = 100.0 * index.total_duration_s / index.video_duration_s \
        if index.video_duration_s else 0.0
    return (f"{index.event_count} bleeding event{'s' if index.event_count != 1 else ''}, "
            f"{index.total_duration_s:.1f} s in total ({share:.0f} % of "
            f"{index.video_duration_s:.1f} s); longest {index.max_duration_s:.1f} s; "
            f"first at {index.first_bleed_s:.1f} s.")


def draw_timeline(ax: Axes, times_s: np.ndarray, probabilities: np.ndarray,
                  events: Sequence[BleedingEvent], duration_s: float, threshold: float,
                  fontsize: float = 8, hold_threshold: float | None = None) -> None:
    """Bleeding probability over time, events shaded and numbered 1..N (in given order;
    every k-th only when there are more than :data:`MAX_TIMELINE_LABELS`), the threshold
    dashed and the hold threshold, if any, dotted.

    The time axis is in seconds, or in minutes for videos of 3 minutes or more.
    """
    minutes = duration_s >= 180
    scale = 60.0 if minutes else 1.0
    label_at = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    every = -(-len(events) // MAX_TIMELINE_LABELS)  # number every k-th event when crowded
    for i, e in enumerate(events, 1):
        ax.axvspan(e.start_s / scale, e.end_s / scale, color=EVENT_COLOUR, alpha=0.25, lw=0)
        if (i - 1) % every == 0:
            ax.text((e.start_s + e.end_s) / 2 / scale, 0.97, str(i), transform=label_at,
                    ha="center", va="top", fontsize=fontsize, color=EVENT_COLOUR,
                    weight="bold")
    ax.plot(np.asarray(times_s) / scale, probabilities, color=CURVE_COLOUR, lw=0.9,
            label="bleeding probability")
    ax.axhline(threshold, color="grey", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    if hold_threshold is not None and hold_threshold < threshold:
        ax.axhline(hold_threshold, color="grey", ls=":", lw=0.8,
                   label=f"events held down to {hold_threshold:g}")
    ax.set_xlim(0, duration_s / scale)
    ax.set_ylim(-0.02, 1.12)  # room above 1 for the event numbers
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("time (min)" if minutes else "time (s)", fontsize=fontsize)
    ax.set_ylabel("P(active bleeding)", fontsize=fontsize)
    ax.tick_params(labelsize=fontsize)
    ax.grid(alpha=0.3)


def _chunks(items: Sequence, first: int, more: int) -> list[Sequence]:
    pages = [items[:first]]
    pages += [items[i:i + more] for i in range(first, len(items), more)]
    return pages


def _table(ax: Axes, events: Sequence[BleedingEvent], start_number: int) -> None:
    ax.axis("off")
    rows = [[str(n), f"{e.start_s:.1f}", f"{e.end_s:.1f}", f"{e.duration_s:.1f}",
             f"{e.peak_probability:.2f}", str(e.key_frame)]
            for n, e in enumerate(events, start_number)]
    table = ax.table(cellText=rows, colLabels=["#", "start (s)", "end (s)", "duration (s)",
                                               "peak probability", "key frame"],
                     loc="upper center", cellLoc="center", colLoc="center",
                     bbox=(0.0, 0.0, 1.0, 1.0))
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("#bbbbbb")
        if row == 0:
            cell.set_facecolor("#eeeeee")
            cell.set_text_props(weight="bold")


def _key_frame(ax: Axes, number: int, event: BleedingEvent, content: ReportContent) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{number}: {event.start_s:.1f}-{event.end_s:.1f} s, frame {event.key_frame}",
                 fontsize=7.5)
    rgb = content.key_frames.get(event.key_frame)
    if rgb is None:
        ax.text(0.5, 0.5, "key frame not available", ha="center", va="center", fontsize=7,
                transform=ax.transAxes)
        return
    step = max(1, int(np.ceil(rgb.shape[1] / MAX_FRAME_WIDTH)))
    ax.imshow(np.asarray(rgb)[::step, ::step], interpolation="bilinear")
    mask = content.masks.get(event.key_frame)
    if mask is not None and np.asarray(mask).any():
        small = np.asarray(mask, bool)[::step, ::step].astype(float)
        ax.contour(small, levels=[0.5], colors=[MASK_COLOUR], linewidths=1.0)


def _frame_grid(fig: Figure, cells: Sequence[tuple[int, BleedingEvent]], content: ReportContent,
                top: float, columns: int = 3) -> None:
    """Key frames in rows of ``columns`` below ``top`` (fraction of the page height)."""
    for k, (number, event) in enumerate(cells):
        r, c = divmod(k, columns)
        ax = fig.add_axes((0.06 + c * 0.30, top - (r + 1) * _FRAME_ROW_HEIGHT, 0.27,
                           _FRAME_ROW_HEIGHT - 0.03))
        _key_frame(ax, number, event, content)


def _page_frame(fig: Figure, content: ReportContent, page: int, pages: int,
                created: _dt.datetime) -> None:
    """Notice at the top (demo model) and the footer line, on every page."""
    notice = content.algorithm.disclaimer
    if notice:
        fig.text(0.5, 0.945, notice.upper(), ha="center", va="center", fontsize=10,
                 color="white", weight="bold",
                 bbox={"boxstyle": "square,pad=0.4", "facecolor": NOTICE_COLOUR, "lw": 0})
    algo = content.algorithm
    fig.text(0.06, 0.02, f"{MANUFACTURER} · {algo.name} {algo.version} · "
             f"{created.strftime('%Y-%m-%d %H:%M')}", fontsize=7, color="#555555")
    fig.text(0.94, 0.02, f"page {page}/{pages}", ha="right", fontsize=7, color="#555555")


def _first_page(fig: Figure, content: ReportContent, rows: Sequence[BleedingEvent],
                frames: Sequence[tuple[int, BleedingEvent]]) -> None:
    fig.text(0.06, 0.975, REPORT_TITLE, fontsize=14, weight="bold", va="top")
    y = 0.91
    for label, value in content.header:
        fig.text(0.06, y, f"{label}:", fontsize=8.5, weight="bold", va="top")
        fig.text(0.24, y, value, fontsize=8.5, va="top")
        y -= 0.0175
    fig.text(0.06, y - 0.008, summary_line(content.index), fontsize=10.5, weight="bold",
             va="top")
    ax = fig.add_axes((0.10, 0.555, 0.85, 0.17))
    draw_timeline(ax, content.times_s, content.probabilities, content.events,
                  content.duration_s, content.threshold,
                  hold_threshold=content.hold_threshold)
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.22), ncol=3, fontsize=7.5,
              frameon=False)
    ax.set_title("Timeline", loc="left", fontsize=10, weight="bold", pad=14)
    top = 0.49
    if rows:
        fig.text(0.06, top, "Events", fontsize=10, weight="bold")
        height = _ROW_HEIGHT * (len(rows) + 1)
        _table(fig.add_axes((0.06, top - 0.01 - height, 0.88, height)), rows, 1)
        top -= height + 0.05
    if frames:
        fig.text(0.06, top, "Key frames (bleeding mask outlined in green)", fontsize=10,
                 weight="bold")
        _frame_grid(fig, frames, content, top - 0.005)
    algo = content.algorithm
    model = (f"Model: {algo.name} {algo.version}; weights: {algo.weights.value}; "
             f"Device UID {algo.device_uid}")
    lines = [model, *textwrap.wrap(algo.description, 120)[:2]]
    fig.text(0.06, 0.075, "\n".join(lines), fontsize=7, va="top", linespacing=1.4)


def render_report_pdf(content: ReportContent, created: _dt.datetime | None = None) -> bytes:
    """Draw the report of one case as a PDF (A4 portrait).

    Parameters
    ----------
    content : ReportContent
        What to show.
    created : datetime, optional
        Time printed in the footer and the PDF metadata; now when omitted.

    Returns
    -------
    bytes
        The PDF file: one page when there are at most 8 events, more otherwise.
    """
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    if not isinstance(content, ReportContent):
        raise ReportError(f"content must be a ReportContent, got {type(content).__name__}")
    created = created or _dt.datetime.now().astimezone()
    numbered = list(enumerate(content.events, 1))
    table_pages = _chunks(content.events, FIRST_PAGE_ROWS, MORE_PAGE_ROWS)
    frame_pages = _chunks(numbered, FIRST_PAGE_FRAMES, MORE_PAGE_FRAMES)
    extra_tables = [p for p in table_pages[1:] if p]
    extra_frames = [p for p in frame_pages[1:] if p]
    pages = 1 + len(extra_tables) + len(extra_frames)
    algo = content.algorithm
    metadata = {"Title": REPORT_TITLE, "Author": MANUFACTURER, "Creator": MANUFACTURER,
                "Subject": f"{summary_line(content.index)} Model {algo.name} {algo.version}"
                           + (f"; {algo.disclaimer}" if algo.disclaimer else ""),
                "CreationDate": created}
    buffer = io.BytesIO()
    with matplotlib.rc_context(_FONT), PdfPages(buffer, metadata=metadata) as pdf:
        fig = Figure(figsize=A4_INCHES)
        _first_page(fig, content, table_pages[0], frame_pages[0])
        _page_frame(fig, content, 1, pages, created)
        pdf.savefig(fig)
        page = 1
        first_number = 1 + len(table_pages[0])
        for rows in extra_tables:
            page += 1
            fig = Figure(figsize=A4_INCHES)
            fig.text(0.06, 0.91, f"Events (continued, {first_number}-"
                     f"{first_number + len(rows) - 1} of {len(content.events)})",
                     fontsize=11, weight="bold")
            height = _ROW_HEIGHT * (len(rows) + 1)
            _table(fig.add_axes((0.06, 0.89 - height, 0.88, height)), rows, first_number)
            first_number += len(rows)
            _page_frame(fig, content, page, pages, created)
            pdf.savefig(fig)
        for cells in extra_frames:
            page += 1
            fig = Figure(figsize=A4_INCHES)
            fig.text(0.06, 0.91, "Key frames (continued; bleeding mask outlined in green)",
                     fontsize=11, weight="bold")
            _frame_grid(fig, cells, content, 0.89)
            _page_frame(fig, content, page, pages, created)
            pdf.savefig(fig)
    return buffer.getvalue()
