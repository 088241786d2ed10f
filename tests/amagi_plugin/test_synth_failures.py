"""``amagi synth`` when a case fails: nothing half-written is left, an existing case survives a
failed overwrite, and the cases not yet started are dropped instead of rendered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from amagi_plugin.synth import writer
from amagi_plugin.synth.dataset import generate_dataset
from amagi_plugin.synth.writer import OutputOptions

SMALL = dict(width=64, height=48, fps=10.0, duration_s=2.0)


class RenderFailed(RuntimeError):
    pass


def _fail_after(monkeypatch: pytest.MonkeyPatch, n_frames: int) -> None:
    """Rendering raises after ``n_frames`` frames (files of the case are already on disk)."""
    real = writer.Renderer.frames

    def frames(self):  # type: ignore[no-untyped-def]
        for i, fr in enumerate(real(self)):
            if i == n_frames:
                raise RenderFailed("renderer died")
            yield fr

    monkeypatch.setattr(writer.Renderer, "frames", frames)


def test_a_case_that_fails_midway_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    _fail_after(monkeypatch, 5)
    with pytest.raises(RenderFailed):
        generate_dataset(tmp_path / "d", 1, 3, options=OutputOptions(formats=("mp4", "rawframes")),
                         **SMALL)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == []


def test_a_failed_overwrite_keeps_the_case_it_would_replace(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "d"
    generate_dataset(root, 1, 3, **SMALL)
    (case,) = [p for p in root.iterdir() if p.is_dir()]
    before = sorted(p.relative_to(case) for p in case.rglob("*"))
    assert (case / "labels.json").is_file()
    # a stale staging directory of a killed run is cleared, not mistaken for the case
    stale = root / f".{case.name}.partial"
    stale.mkdir()
    (stale / "junk").write_text("left by a killed run")

    _fail_after(monkeypatch, 5)
    with pytest.raises(RenderFailed):
        generate_dataset(root, 1, 3, options=OutputOptions(overwrite=True), **SMALL)
    assert sorted(p.relative_to(case) for p in case.rglob("*")) == before
    assert not stale.exists()

    monkeypatch.undo()
    generate_dataset(root, 1, 3, options=OutputOptions(overwrite=True), **SMALL)
    assert sorted(p.relative_to(case) for p in case.rglob("*")) == before
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_a_failed_case_stops_the_cases_not_yet_started(tmp_path: Path, monkeypatch) -> None:
    """With worker processes, the first case fails at once and every other takes 1 s: the
    error comes back after the cases already handed to a worker, not after all ten are
    rendered."""
    real = writer._write_case

    def slow_or_failing(spec, case_dir, options):  # type: ignore[no-untyped-def]
        if spec.index == 0:
            raise RenderFailed(f"case {spec.case_id} failed")
        time.sleep(1.0)
        return real(spec, case_dir, options)

    # the pool's workers are forked from this process after the patch, so they see it
    monkeypatch.setattr(writer, "_write_case", slow_or_failing)
    root = tmp_path / "d"
    with pytest.raises(RenderFailed, match="failed"):
        generate_dataset(root, 10, 3, jobs=2, **SMALL)
    written = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    # at most the cases already handed over ran: one in each worker and the executor's call
    # queue (workers + 1); without the cancellation all nine would be written
    assert len(written) <= 5, sorted(p.name for p in written)
    assert not (root / "cases.json").exists()
