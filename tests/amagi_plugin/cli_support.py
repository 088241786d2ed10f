"""Running ``amagi`` commands in a fresh process, for tests that need one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def synth_in_fresh_process(cwd: Path, *argv: str) -> None:
    """``amagi synth`` in its own process, as the demo build runs it (through its CLI)."""
    r = subprocess.run([sys.executable, "-m", "amagi_plugin.cli", "synth", *argv,
                        "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
