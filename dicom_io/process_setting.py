"""Process-wide settings that a library forces on us, held only while someone needs them.

Some libraries read their options from module globals: pynetdicom's
``_config.STORE_RECV_CHUNKED_DATASET`` / ``STORE_SEND_CHUNKED_DATASET``, and
:data:`tempfile.tempdir`, where pynetdicom streams received data sets. A
:class:`ProcessSetting` makes such a change explicit and scoped: owners (a running listener,
a send in progress, a running service) claim it with the value they need and release it when
done; the value follows the newest owner still holding it, and the value from before the
first claim comes back once the last owner releases, whatever order they release in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class ProcessSetting:
    """One process-wide setting, shared by the owners that claim it (thread-safe).

    Parameters
    ----------
    name : str
        What it is, for messages (``"tempfile.tempdir"``).
    get, set : callable
        Read and write the setting.
    """

    def __init__(self, name: str, get: Callable[[], Any], set: Callable[[Any], None]) -> None:
        self.name = name
        self._get, self._set = get, set
        self._lock = threading.Lock()
        self._owners: list[tuple[object, Any]] = []  # (owner, its value), oldest first
        self._before: Any = None

    def claim(self, owner: object, value: Any) -> None:
        """Set the value for ``owner`` until it calls :meth:`release`."""
        with self._lock:
            if not self._owners:
                self._before = self._get()
            self._owners.append((owner, value))
            self._set(value)

    def release(self, owner: object) -> None:
        """Drop ``owner``'s claim (nothing if it holds none); the value goes back to the
        newest remaining owner's, or to the one before the first claim."""
        with self._lock:
            kept = [(o, v) for o, v in self._owners if o is not owner]
            if len(kept) == len(self._owners):
                return
            self._owners = kept
            self._set(kept[-1][1] if kept else self._before)

    @contextmanager
    def held(self, value: Any) -> Iterator[None]:
        """Hold ``value`` for the duration of a ``with`` block."""
        token = object()
        self.claim(token, value)
        try:
            yield
        finally:
            self.release(token)

    @property
    def owners(self) -> int:
        """How many owners hold it now."""
        with self._lock:
            return len(self._owners)
