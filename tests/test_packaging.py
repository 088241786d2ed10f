"""The install is what the README promises: torch 2.13.0, no CUDA wheels, the amagi command."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_torch_pinned_and_no_cuda_packages() -> None:
    assert md.version("torch").split("+")[0] == "2.13.0"
    names = {d.metadata["Name"].lower() for d in md.distributions()}
    cuda = sorted(n for n in names if n.startswith(("nvidia-", "cuda-", "triton")))
    assert cuda == [], f"CUDA packages installed: {cuda}"
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    assert re.search(r"^\s*torch==2\.13\.0\s*$", (ROOT / "setup.cfg").read_text(), re.M)


def test_readme_commands_are_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert first_block, "README starts with a code block of the two commands"
    assert first_block.group(1).split("\n")[:2] == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("amagi")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().startswith("amagi 0.")
