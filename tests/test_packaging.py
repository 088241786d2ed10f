"""The install is what the README promises: torch 2.13.0, no CUDA wheels, the amagi command."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_suites_long_files_are_handed_out_first(request: pytest.FixtureRequest) -> None:
    """The files holding a ``slow`` test come first in the collection (tests/conftest.py), and
    pytest-xdist hands the files out in that order, whole: with its default reordering (most
    tests first) the one-test demo builds started last and left the other worker idle."""
    addopts = " ".join(request.config.getini("addopts"))
    assert "--dist loadfile" in addopts and request.config.option.loadscopereorder is False
    files = list(dict.fromkeys(item.path for item in request.session.items))
    slow = {item.path for item in request.session.items if item.get_closest_marker("slow")}
    first_fast = next((i for i, f in enumerate(files) if f not in slow), len(files))
    assert all(f not in slow for f in files[first_fast:]), "a slow file after a fast one"


def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("amagi")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().startswith("amagi 0.")
    # through exit_with, which ends a process that trained under torchrun without teardown
    from importlib.metadata import entry_points
    (script,) = entry_points(group="console_scripts", name="amagi")
    assert script.value == "amagi_plugin.cli:entry"


# What scripts/device/prepare.sh leaves out of the GPU machine's wheels: only `amagi serve`,
# `process` and `db` may need them. The demo build's stages run as `amagi` commands, and
# the command line builds every command's parser at start.
SERVE_ONLY = ("alembic", "pynetdicom", "highdicom", "psycopg", "sqlalchemy")

_WITHOUT_SERVE_PACKAGES = f"""
import sys
for name in {SERVE_ONLY!r}:
    sys.modules[name] = None  # any import of it fails, as on the GPU image
from amagi_plugin.cli import main
import amagi_plugin.demo_model, amagi_plugin.evaluation.calibrate, amagi_plugin.evaluation.run
import models.training
sys.exit(main(sys.argv[1:]))
"""


def test_the_demo_builds_commands_need_no_serve_only_package(tmp_path: Path) -> None:
    """A regression seen in a CPU rehearsal of the GPU build: `amagi synth` failed because
    the `config` command's module imported the db package (and so alembic) at start."""
    r = subprocess.run([sys.executable, "-c", _WITHOUT_SERVE_PACKAGES, "synth", "-od",
                        str(tmp_path / "d"), "--cases", "1", "--duration-s", "1", "--size",
                        "64x48", "--fps", "10", "--formats", "dicom", "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "d" / "cases.json").is_file()
    for command in ("train", "evaluate", "calibrate"):
        r = subprocess.run([sys.executable, "-c", _WITHOUT_SERVE_PACKAGES, command, "--help"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 0, (command, r.stderr[-2000:])
