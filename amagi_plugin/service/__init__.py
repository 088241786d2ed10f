"""The ``amagi serve`` service: listener → database queue → workers → deliveries, one process.

Everything a worker needs is in the database and the spool, so a crash loses nothing:
at restart, unfinished jobs are picked up again (lease expiry) and unsent results are sent.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

#: What a running service publishes in its var dir every second (workers, refused C-STOREs).
HEALTH_FILE = "workers.json"
#: Published health older than this (s) means the service stopped publishing.
STALE_AFTER_S = 30.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (ours always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def service_health(var_dir: Path, now: dt.datetime | None = None) -> dict[str, Any] | None:
    """What the running ``amagi serve`` last published (workers, refused C-STOREs), with
    ``running`` false when its process is gone or it stopped publishing; ``None`` when no
    service has published in ``var_dir``."""
    try:
        doc = json.loads((var_dir / HEALTH_FILE).read_text())
    except (OSError, ValueError):
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        age = (now - dt.datetime.fromisoformat(doc["updated_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        age = float("inf")
    doc["age_s"] = round(age, 1)
    doc["running"] = pid_alive(int(doc.get("pid", 0) or 0)) and age < STALE_AFTER_S
    return doc
