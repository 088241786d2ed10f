"""The HTML report in Debian's headless Chromium, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``): it renders, loads nothing from the network, logs no error,
and real mouse clicks on an event (timeline or table) seek to its key frame."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from amagi_plugin.report import ReportContent, ReportError, preview_frame_numbers
from amagi_plugin.report_html import OUTLINE_RGB, outlined, render_report_html
from tests.amagi_plugin.test_report import AUTHORS, DEMO, _header, _result

CHROMIUM = shutil.which("chromium")


class DevTools:
    """Headless Chromium and one page, spoken to in CDP JSON messages ending with NUL."""

    def __init__(self, profile: Path) -> None:
        if CHROMIUM is None:
            raise AssertionError("chromium is not installed (make test installs Debian "
                                 "'chromium')")
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()

        def fds() -> None:  # the browser reads commands on fd 3 and answers on fd 4
            commands, answers = os.dup(to_child), os.dup(from_child)  # either may be 3 or 4
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--window-size=1200,900", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds,  # kept open: the fds are closed after fds()
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def _message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no message from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise ConnectionError("chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, timeout: float = 30.0,
             **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self._message(deadline - time.monotonic())
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of ``selector``."""
        box = self.js(f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            el.scrollIntoView({{block: "center"}}); const r = el.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)

    def errors(self) -> list[dict[str, Any]]:
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown" or (
                    method == "Runtime.consoleAPICalled" and params.get("type") == "error") or (
                    method == "Log.entryAdded" and params["entry"]["level"] == "error"):
                found.append(e)
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError, AssertionError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_browser)
        os.close(self._from_browser)


def _content(n_events: int, algorithm=DEMO) -> ReportContent:
    result = _result(n_events)
    rng = np.random.default_rng(1)
    previews = {e.key_frame: [rng.integers(0, 255, (90, 160, 3), np.uint8) for _ in range(4)]
                for e in result.events}
    return ReportContent.from_result(result, algorithm, 0.5, _header(), previews)


@pytest.fixture
def browser(tmp_path):
    tools = DevTools(tmp_path / "profile")
    try:
        yield tools
    finally:
        tools.close()


def _open(browser: DevTools, path: Path) -> None:
    browser.call("Page.navigate", session=True, url=path.as_uri())
    browser.wait_event("Page.loadEventFired")


def test_chromium_is_installed():
    assert CHROMIUM, "chromium missing: make test installs the Debian package 'chromium'"


@pytest.mark.integration
def test_html_report_renders_and_clicks_seek_to_key_frames(browser, tmp_path):
    content = _content(12)
    path = tmp_path / "report.html"
    path.write_text(render_report_html(content), encoding="utf-8")
    _open(browser, path)

    assert browser.js("document.title").startswith("Active intraoperative bleeding")
    assert browser.js("document.getElementById('notice').textContent") == \
        "demo model trained on synthetic data; not for clinical use"
    assert browser.js("document.querySelectorAll('#events tbody tr').length") == 12
    assert browser.js("document.querySelectorAll('svg a.event').length") == 12
    # every image decoded (data: URIs), key frames and previews
    sizes = browser.js("[...document.images].map(i => [i.className, i.complete, "
                       "i.naturalWidth])")
    assert len(sizes) == 24 and all(done and width > 0 for _, done, width in sizes), sizes
    assert browser.js("document.querySelector('figure.selected')") is None

    # a click on event 9 in the table seeks to its key frame
    browser.click('#events a[data-event="9"]')
    assert browser.js("location.hash") == "#event-9"
    assert browser.js("document.querySelector('figure.selected').id") == "event-9"
    event9 = content.events[8]
    assert browser.js("document.getElementById('current').textContent") == \
        f"Event 9 at {event9.start_s:.1f} s (key frame {event9.key_frame})"
    assert browser.js("""(() => { const r = document.getElementById('event-9')
        .getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight; })()""")

    # a click on event 2 in the timeline does the same, and only one figure is selected
    browser.click('svg a.event[data-event="2"] rect')
    assert browser.js("[...document.querySelectorAll('figure.selected')].map(f => f.id)") == \
        ["event-2"]
    assert browser.js("location.hash") == "#event-2"

    assert browser.errors() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []


@pytest.mark.integration
def test_html_report_link_with_an_event_opens_at_it(browser, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_report_html(_content(3)), encoding="utf-8")
    browser.call("Page.navigate", session=True, url=path.as_uri() + "#event-3")
    browser.wait_event("Page.loadEventFired")
    assert browser.js("document.querySelector('figure.selected').id") == "event-3"
    assert browser.errors() == []


def test_html_report_is_self_contained_and_escapes_text():
    content = _content(2, AUTHORS)
    page = render_report_html(content)
    assert "http://" not in page and "https://" not in page and "src=\"data:image/" in page
    assert "default-src 'none'" in page
    assert "not for clinical use" not in page.lower()
    hostile = ReportContent(content.times_s, content.probabilities, content.events,
                            content.index, content.duration_s, 0.5, content.algorithm,
                            header=[("Patient", "<script>alert(1)</script>")])
    assert "<script>alert(1)</script>" not in render_report_html(hostile)
    # a hold threshold is drawn dotted below the dashed threshold, and said so
    assert "dotted" not in page
    held = render_report_html(dataclasses.replace(content, hold_threshold=0.3))
    assert 'stroke-dasharray="1,3"' in held and "dotted: events held down to 0.3" in held


def test_mask_outline_and_preview_frames():
    rgb = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    out = outlined(rgb, mask)
    green = (out == OUTLINE_RGB).all(axis=2)
    assert green[5, 10:20].all() and green[14, 10:20].all() and green[5:15, 10].all()
    assert not green[6:14, 11:19].any() and not green[~mask].any()
    with pytest.raises(ReportError, match="mask shape"):
        outlined(rgb, mask[:-1])
    event = _result(1).events[0]
    numbers = preview_frame_numbers(event, 6)
    assert numbers[0] == event.start_frame and numbers[-1] == event.end_frame
    assert len(numbers) == 6 and numbers == sorted(set(numbers))
