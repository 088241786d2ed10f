"""Running ``amagi`` commands in a fresh process, for tests that need one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def synth_in_fresh_process(cwd: Path, *argv: str) -> None:
    """``amagi synth`` in its own process: the H.264 bytes of a case were seen to depend on
    what was encoded earlier in the same process (not yet explained), and the recorded demo
    results come from fresh processes."""
    r = subprocess.run([sys.executable, "-m", "amagi_plugin.cli", "synth", *argv,
                        "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
