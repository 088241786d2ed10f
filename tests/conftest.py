"""Shared test helpers: run the CLI in-process with an injected environment."""

from __future__ import annotations

import io
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
