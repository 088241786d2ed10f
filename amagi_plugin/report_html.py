"""The case report as one self-contained HTML file (no network resource of any kind).

The same content as the PDF (:mod:`amagi_plugin.report`): header, summary, the timeline
(inline SVG, events shaded and numbered), the events table and the key frames with the
bleeding mask outlined, the model identification and a demo model's notice. Clicking an
event, in the timeline or the table, seeks to its key frame: the figure is scrolled into
view and highlighted, and the status line says which event and time it shows. Each event
also has a short animated preview (GIF) when the content carries preview frames. Images
are ``data:`` URIs; a Content-Security-Policy forbids loading anything else.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io

import numpy as np

from amagi_plugin.report import (
    CURVE_COLOUR,
    EVENT_COLOUR,
    MAX_FRAME_WIDTH,
    NOTICE_COLOUR,
    REPORT_TITLE,
    ReportContent,
    ReportError,
    summary_line,
)
from dicom_io.results import MANUFACTURER, BleedingEvent

#: Mask outline colour on the key frames (RGB 0-255).
OUTLINE_RGB = (0, 224, 0)
#: Preview frames are drawn at most this wide (pixels) and shown this long (milliseconds).
PREVIEW_WIDTH, PREVIEW_FRAME_MS = 240, 250
_SVG_W, _SVG_H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 1000, 220, 48, 12, 22, 34

_CSS = f"""
body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 1.5em auto; max-width: 1040px;
       color: #222; }}
h1 {{ font-size: 1.5em; margin-bottom: .3em; }}
h2 {{ font-size: 1.15em; margin-top: 1.4em; }}
.notice {{ background: {NOTICE_COLOUR}; color: #fff; font-weight: bold; padding: .4em .8em;
          text-transform: uppercase; display: inline-block; }}
dl {{ display: grid; grid-template-columns: 11em auto; gap: .15em .8em; font-size: .92em; }}
dt {{ font-weight: bold; }} dd {{ margin: 0; }}
.summary {{ font-weight: bold; font-size: 1.05em; }}
svg {{ width: 100%; height: auto; border: 1px solid #ccc; }}
svg .event rect {{ fill: {EVENT_COLOUR}; fill-opacity: .25; cursor: pointer; }}
svg .event:hover rect {{ fill-opacity: .45; }}
svg .event text {{ fill: {EVENT_COLOUR}; font-weight: bold; font-size: 12px; }}
svg .axis {{ font-size: 11px; fill: #444; }}
svg polyline, svg line, svg .axis {{ pointer-events: none; }}
table {{ border-collapse: collapse; font-size: .92em; }}
th, td {{ border: 1px solid #bbb; padding: .25em .8em; text-align: center; }}
th {{ background: #eee; }}
.frames {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; padding: .4em; border: 3px solid transparent; }}
figure.selected {{ border-color: {EVENT_COLOUR}; background: #fff3f3; }}
figure img {{ display: block; max-width: {MAX_FRAME_WIDTH // 2}px; }}
figcaption {{ font-size: .85em; margin-top: .3em; }}
#current {{ position: sticky; bottom: 0; background: #fff; border-top: 1px solid #ccc;
           padding: .3em 0; margin: 0; min-height: 1.2em; }}
footer {{ font-size: .8em; color: #555; margin-top: 2em; }}
"""

_SCRIPT = """
function seek(n) {
  document.querySelectorAll("figure.selected").forEach(f => f.classList.remove("selected"));
  const figure = document.getElementById("event-" + n);
  if (!figure) { return false; }
  figure.classList.add("selected");
  figure.scrollIntoView({block: "center"});
  document.getElementById("current").textContent =
    "Event " + n + " at " + figure.dataset.start + " s (key frame " + figure.dataset.frame + ")";
  return true;
}
document.querySelectorAll("[data-event]").forEach(link => {
  link.addEventListener("click", click => {
    click.preventDefault();
    history.replaceState(null, "", "#event-" + link.dataset.event);
    seek(link.dataset.event);
  });
});
if (location.hash.startsWith("#event-")) { seek(location.hash.slice(7)); }
"""


def _png(rgb: np.ndarray) -> str:
    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _gif(frames: list[np.ndarray]) -> str:
    from PIL import Image

    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=PREVIEW_FRAME_MS, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _shrink(rgb: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    step = max(1, int(np.ceil(rgb.shape[1] / width)))
    return np.ascontiguousarray(np.asarray(rgb, np.uint8)[::step, ::step]), step


def outlined(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``rgb`` (uint8 ``(H, W, 3)``) with the border pixels of ``mask`` painted green."""
    out = np.array(rgb, np.uint8, copy=True)
    if mask is None:
        return out
    m = np.asarray(mask, bool)
    if m.shape != out.shape[:2]:
        raise ReportError(f"mask shape {m.shape} differs from the frame's {out.shape[:2]}")
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    out[m & ~inner] = OUTLINE_RGB
    return out


def _tick_step(span: float, most: int = 10) -> float:
    """The smallest of 1, 2, 5 x 10^k giving at most ``most`` intervals over ``span``."""
    magnitude = 10.0 ** np.floor(np.log10(max(span, 1e-9) / most))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if span / (factor * magnitude) <= most:
            return float(factor * magnitude)
    return float(10.0 * magnitude)


def _timeline_svg(content: ReportContent) -> str:
    minutes = content.duration_s >= 180
    scale = 60.0 if minutes else 1.0
    span = content.duration_s / scale
    width, height = _SVG_W - _PAD_L - _PAD_R, _SVG_H - _PAD_T - _PAD_B

    def x(t_s: float) -> float:
        return _PAD_L + width * (t_s / scale) / span

    def y(p: float) -> float:
        return _PAD_T + height * (1.0 - p)

    parts = [f'<svg viewBox="0 0 {_SVG_W} {_SVG_H}" role="img" '
             f'aria-label="bleeding probability over time">']
    points = " ".join(f"{x(t):.1f},{y(p):.1f}" for t, p in
                      zip(content.times_s, np.nan_to_num(content.probabilities), strict=True))
    parts.append(f'<polyline points="{points}" fill="none" stroke="{CURVE_COLOUR}" '
                 f'stroke-width="1.2"/>')
    ty = y(content.threshold)
    parts.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + width}" y1="{ty:.1f}" y2="{ty:.1f}" '
                 f'stroke="grey" stroke-dasharray="5,4"/>')
    hold = content.hold_threshold
    held = hold is not None and hold < content.threshold
    if held:
        hy = y(hold)
        parts.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + width}" y1="{hy:.1f}" '
                     f'y2="{hy:.1f}" stroke="grey" stroke-dasharray="1,3"/>')
    parts.append(f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{width}" height="{height}" '
                 f'fill="none" stroke="#444"/>')
    for p in (0.0, 0.5, 1.0):
        parts.append(f'<text class="axis" x="{_PAD_L - 6}" y="{y(p) + 4:.1f}" '
                     f'text-anchor="end">{p:.1f}</text>')
    step = _tick_step(span)
    for t in np.arange(0.0, span + 1e-9, step):
        parts.append(f'<text class="axis" x="{_PAD_L + width * t / span:.1f}" '
                     f'y="{_SVG_H - _PAD_B + 16}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text class="axis" x="{_PAD_L + width / 2:.1f}" y="{_SVG_H - 4}" '
                 f'text-anchor="middle">time ({"min" if minutes else "s"}); dashed: threshold '
                 f'{content.threshold:g}'
                 + (f'; dotted: events held down to {hold:g}' if held else '') + '</text>')
    for n, e in enumerate(content.events, 1):  # last: on top, so a click always finds them
        x0, x1 = x(e.start_s), x(e.end_s)
        parts.append(f'<a class="event" href="#event-{n}" data-event="{n}">'
                     f'<title>Event {n}: {e.start_s:.1f}-{e.end_s:.1f} s</title>'
                     f'<rect x="{x0:.1f}" y="{_PAD_T}" width="{max(x1 - x0, 2.0):.1f}" '
                     f'height="{height}"/><text x="{(x0 + x1) / 2:.1f}" y="{_PAD_T - 6}" '
                     f'text-anchor="middle">{n}</text></a>')
    parts.append("</svg>")
    return "".join(parts)


def _figure(n: int, e: BleedingEvent, content: ReportContent) -> str:
    caption = html.escape(f"Event {n}: {e.start_s:.1f}-{e.end_s:.1f} s, key frame "
                          f"{e.key_frame}, peak probability {e.peak_probability:.2f}")
    parts = [f'<figure id="event-{n}" data-start="{e.start_s:.1f}" data-frame="{e.key_frame}">']
    rgb = content.key_frames.get(e.key_frame)
    if rgb is not None:
        mask = content.masks.get(e.key_frame)
        shown = outlined(rgb, mask)
        small, _ = _shrink(shown, MAX_FRAME_WIDTH)
        parts.append(f'<img class="key-frame" alt="key frame {e.key_frame} of event {n}" '
                     f'src="{_png(small)}">')
    else:
        parts.append("<p>key frame not available</p>")
    preview = content.previews.get(e.key_frame)
    if preview:
        frames = [_shrink(f, PREVIEW_WIDTH)[0] for f in preview]
        parts.append(f'<img class="preview" alt="preview of event {n}" src="{_gif(frames)}">')
    parts.append(f"<figcaption>{caption}</figcaption></figure>")
    return "".join(parts)


def render_report_html(content: ReportContent, created: _dt.datetime | None = None) -> str:
    """The report of one case as a self-contained HTML document (UTF-8 text).

    Parameters
    ----------
    content : ReportContent
        What to show (the same object the PDF is drawn from).
    created : datetime, optional
        Time printed in the footer; now when omitted.
    """
    if not isinstance(content, ReportContent):
        raise ReportError(f"content must be a ReportContent, got {type(content).__name__}")
    created = created or _dt.datetime.now().astimezone()
    esc = html.escape
    algo = content.algorithm
    notice = algo.disclaimer
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
           "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
           f"<title>{esc(REPORT_TITLE)}</title><style>{_CSS}</style></head><body>",
           f"<header><h1>{esc(REPORT_TITLE)}</h1>"]
    if notice:
        out.append(f'<p class="notice" id="notice">{esc(notice)}</p>')
    out.append("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>"
                                for k, v in content.header) + "</dl>")
    out.append(f'<p class="summary">{esc(summary_line(content.index))}</p></header>')
    out.append(f'<section id="timeline"><h2>Timeline</h2>{_timeline_svg(content)}</section>')
    if content.events:
        rows = "".join(
            f'<tr id="row-{n}"><td><a href="#event-{n}" data-event="{n}">{n}</a></td>'
            f"<td>{e.start_s:.1f}</td><td>{e.end_s:.1f}</td><td>{e.duration_s:.1f}</td>"
            f"<td>{e.peak_probability:.2f}</td><td>{e.key_frame}</td></tr>"
            for n, e in enumerate(content.events, 1))
        out.append('<section id="events"><h2>Events</h2><table><thead><tr><th>#</th>'
                   "<th>start (s)</th><th>end (s)</th><th>duration (s)</th>"
                   f"<th>peak probability</th><th>key frame</th></tr></thead><tbody>{rows}"
                   "</tbody></table></section>")
        out.append('<section><h2>Key frames (bleeding mask outlined in green)</h2>'
                   '<div class="frames">' + "".join(
                       _figure(n, e, content) for n, e in enumerate(content.events, 1))
                   + "</div></section>")
    model = (f"Model: {algo.name} {algo.version}; weights: {algo.weights.value}; "
             f"Device UID {algo.device_uid}")
    out.append(f"<footer><p>{esc(model)}</p><p>{esc(algo.description)}</p>"
               f"<p>{esc(MANUFACTURER)} · {created.strftime('%Y-%m-%d %H:%M')}"
               + (f" · {esc(notice)}" if notice else "") + "</p></footer>")
    out.append('<p id="current" role="status"></p>')
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)
