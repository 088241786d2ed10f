"""The ``amagi serve`` service: listener → database queue → workers → deliveries, one process.

Everything a worker needs is in the database and the spool, so a crash loses nothing:
at restart, unfinished jobs are picked up again (lease expiry) and unsent results are sent.
"""

from __future__ import annotations

import os


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
