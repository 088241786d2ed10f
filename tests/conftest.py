"""Shared test helpers: run the CLI in-process with an injected environment; the
``integration`` marker kept true (a test that runs an external peer carries it)."""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from amagi_plugin.cli import Context, main


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(tmp_path: Path):
    """``run_cli(*argv, env={...})`` runs ``amagi`` in-process in a scratch directory."""

    def run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
        ctx = Context(stdout=io.StringIO(), stderr=io.StringIO(), environ=dict(env or {}),
                      cwd=cwd or tmp_path)
        code = main(list(argv), ctx=ctx)
        return CliResult(code, ctx.stdout.getvalue(), ctx.stderr.getvalue())

    return run


#: Programs of the Debian peers ``make test`` installs (the Makefile's APT_PACKAGES).
PEER_PROGRAMS = frozenset({
    "storescu", "storescp", "findscu", "echoscu", "movescu", "getscu", "dcmsend", "dcmrecv",
    "dcmdump", "dcm2json", "dcm2xml", "img2dcm", "dcmqrscp", "dciodvfy", "dcentvfy",
    "Orthanc", "pdftotext", "pdfinfo", "pdftoppm", "chromium", "initdb", "pg_ctl", "postgres",
    "psql"})
#: Fixtures that start or run one of them: a test that uses one is an integration test.
PEER_FIXTURES = frozenset({"pg_server", "storescp", "dciodvfy_errors"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``integration`` every test that uses a peer fixture (directly or through another);
    run the files that hold a ``slow`` test first, so that on several workers (pytest-xdist,
    one file per worker at a time) the long ones do not start last and leave a worker idle.
    Files stay whole and in their order otherwise. pytest-xdist keeps this order only with
    ``--no-loadscope-reorder`` (setup.cfg): by default it hands out the files with the most
    tests first, which put the one-test demo builds (minutes each) at the end."""
    for item in items:
        if PEER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def _program(args: object) -> str:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")  # type: ignore[call-overload]
    text = os.fsdecode(first)
    if isinstance(args, (str, bytes)):
        text = text.split()[0] if text.split() else text
    return os.path.basename(text)


@pytest.fixture(autouse=True)
def _peers_need_integration(request: pytest.FixtureRequest,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without the ``integration`` marker fails when it starts a peer program, so
    that ``pytest -m "not integration"`` runs with no external peer installed."""
    if request.node.get_closest_marker("integration"):
        return
    real = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):  # type: ignore[no-untyped-def]
        name = _program(args)
        if name in PEER_PROGRAMS:
            self._child_created = False  # what Popen.__del__ reads of a half-built object
            raise AssertionError(f"{request.node.nodeid} runs the external peer {name!r} "
                                 "but is not marked 'integration'")
        real(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
