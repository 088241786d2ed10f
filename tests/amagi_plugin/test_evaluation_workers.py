"""amagi_plugin.evaluation.run's worker processes: one whose evaluating process is killed
(SIGKILL, so it never closes its pool) stops at once instead of finishing its case for
nobody; one whose parent lives on keeps working."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# a parent that starts one spawned worker set up as evaluate_models sets up its workers,
# prints the worker's pid, then waits (the test kills it) or joins it briefly
SCRIPT = f"""
import multiprocessing as mp, os, sys, time
sys.path.insert(0, {str(ROOT)!r})

def worker(q):
    from amagi_plugin.evaluation.run import _stop_with_parent
    _stop_with_parent()
    q.put(os.getpid())
    time.sleep(120)  # a long case

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=worker, args=(q,))
    p.start()
    print(q.get(), flush=True)
    p.join(float(sys.argv[1]))
    print("alive" if p.is_alive() else "ended", flush=True)
    p.kill()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_worker_stops_when_its_evaluating_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), "120"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    pid = None
    try:
        pid = int(parent.stdout.readline())
        assert _alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the orphaned worker kept running"
        assert "the evaluating process is gone" in parent.stderr.read()
    finally:
        parent.kill()
        if pid is not None and _alive(pid):  # never leave a sleeping worker behind
            os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_parent_lives_keeps_working(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), "2"], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out[1] == "alive"
