"""The OpenVINO backend (``model.backend``, ``--backend``): its numbers against torch and the
authors' (``openvino_cases.py``, run here in a fresh interpreter so that no pytest worker
holds OpenVINO's thread pool: a worker crashed twice beside it, session 44), a clear error
where it cannot run, and OpenVINO's usage telemetry never started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amagi_plugin.backends import check_backend, import_openvino
from amagi_plugin.config import ConfigError
from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from models import build_model

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).with_name("openvino_cases.py")


@pytest.mark.slow
def test_openvino_cases_pass_in_a_fresh_interpreter() -> None:
    """``openvino_cases.py`` (the compiled networks against torch and the authors' AMAGI-SF50
    logits, the demo analysed on both, the configuration reaching them), by pytest in a
    process of its own."""
    out = subprocess.run([sys.executable, "-m", "pytest", str(CASES), "-o", "addopts=",
                          "-p", "no:cacheprovider", "--strict-markers", "-q", "-rf"],
                         cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=850)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_openvino_is_refused_off_the_cpu_and_an_unknown_backend_anywhere() -> None:
    check_backend("openvino", "cpu")
    check_backend("torch", "cuda:1")
    with pytest.raises(ConfigError, match=r"runs on the CPU.*cuda:0"):
        check_backend("openvino", "cuda:0")
    with pytest.raises(ConfigError, match="one of torch, openvino"):
        check_backend("tensorrt", "cpu")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        BleedingAnalyzer(build_model("amagi_tiny"), AnalysisOptions(device="cuda",
                                                                    backend="openvino"))


def hide_openvino(monkeypatch) -> None:
    """Until the test ends, ``import openvino`` fails as if it were not installed."""
    for name in [m for m in sys.modules if m == "openvino" or m.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino: ImportError


def test_a_missing_openvino_says_how_to_install_it(monkeypatch) -> None:
    hide_openvino(monkeypatch)
    with pytest.raises(ConfigError, match=r"pip install 'amagi-plugin\[openvino\]'"):
        import_openvino()


def test_the_cli_refuses_an_unknown_backend_in_one_line(run_cli) -> None:
    r = run_cli("process", str(ROOT / "README.md"), "--backend", "tensorrt")
    assert r.code == 2 and "model.backend" in r.stderr and "tensorrt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


_CONVERT = """
import json, sys
import torch
from amagi_plugin.backends import import_openvino
ov = import_openvino()
m = torch.nn.Conv2d(3, 4, 3)
ov.convert_model(m, example_input=torch.randn(1, 3, 8, 8))
from openvino.tools.ovc import telemetry_utils
print(json.dumps([telemetry_utils.tm.__name__, sys.modules["openvino_telemetry"] is None]))
"""


def test_openvino_converts_without_its_telemetry(tmp_path: Path) -> None:
    """Imported as the backend imports it (in a fresh interpreter, as a service starts),
    OpenVINO's converter takes its no-op telemetry stub, though the telemetry package is
    installed (a plain import would use it: it writes a client id under ``~/intel`` and
    sends usage events), and nothing is written to the home directory."""
    from importlib.metadata import distribution

    assert distribution("openvino-telemetry").version  # installed: what is blocked
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()  # telemetry is off in a CI job: not here
           if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", _CONVERT], env=env, cwd=ROOT,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=300, check=True)
    module, blocked = json.loads(out.stdout.strip().splitlines()[-1])
    assert module == "openvino.tools.ovc.telemetry_stub" and blocked
    assert list(home.rglob("*")) == []
