"""One logging setup for the whole program: text for people, JSON lines for machines.

Patient names and IDs never reach a log: code logs UIDs only, and as a second line of
defence :data:`PHI_FILTER` masks the values registered in an open :class:`PhiScope` (each
running service opens one; its listener registers each received instance's PatientName and
PatientID there, and the values go when the service stops).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import TextIO

REDACTED = "[redacted]"
#: C0/C1 control characters (newline included) and DEL, escaped in every log message.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class PhiValues:
    """Identifiers to mask: a bounded set (the ``capacity`` most recently registered)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._values: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def register(self, *values: object) -> None:
        """Mask these values (patient name, ID) and each of their name components."""
        with self._lock:
            for v in values:
                s = str(v or "").strip()
                # Very short values (a sex code, "1") would mask harmless text.
                if len(s) < 3:
                    continue
                self._values[s] = None
                self._values.move_to_end(s)
                for part in s.replace("^", " ").split():
                    if len(part) >= 3:
                        self._values[part] = None
                while len(self._values) > self._capacity:
                    self._values.popitem(last=False)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self._values)

    def __len__(self) -> int:
        return len(self._values)


class PhiScope(PhiValues):
    """The values one owner (a running service) registers, masked from every log line while
    the scope is open and forgotten when it closes: nothing one service received outlives
    it in the process. A context manager; :meth:`close` may be called more than once."""

    def __init__(self, owner: PhiFilter, capacity: int) -> None:
        super().__init__(capacity)
        self._owner = owner

    def close(self) -> None:
        self._owner._detach(self)

    def __enter__(self) -> PhiScope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PhiFilter(logging.Filter):
    """Masks patient identifiers in every record: the values registered on the filter itself
    (:meth:`register`) and those of every open :class:`PhiScope` (:meth:`open_scope`).

    Logging is process-wide, so one filter serves every handler; what it masks is held by
    its owners' scopes, each bounded to ``capacity`` values.
    """

    def __init__(self, capacity: int = 4096) -> None:
        super().__init__()
        self._capacity = capacity
        self._own = PhiValues(capacity)
        self._scopes: list[PhiScope] = []
        self._lock = threading.Lock()

    def register(self, *values: object) -> None:
        """Mask these values for the filter's lifetime (bounded; see :class:`PhiValues`)."""
        self._own.register(*values)

    def open_scope(self) -> PhiScope:
        """A new set of values to mask until it is closed (one per running service)."""
        scope = PhiScope(self, self._capacity)
        with self._lock:
            self._scopes.append(scope)
        return scope

    def _detach(self, scope: PhiScope) -> None:
        with self._lock:
            self._scopes = [s for s in self._scopes if s is not scope]

    def _values(self) -> list[str]:
        with self._lock:
            owners: list[PhiValues] = [self._own, *self._scopes]
        return sorted({v for o in owners for v in o.snapshot()}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` with every registered value masked where it stands as a whole value:
        never inside a longer word or number, nor a component of a UID ("1.2.840.12345")."""
        for v in self._values():
            if v in text:
                text = re.sub(rf"(?<!\w)(?<!\w\.){re.escape(v)}(?!\w)(?!\.\w)", REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        msg = self.scrub(record.getMessage())
        # A peer's bytes (AE titles, reasons) must not forge log lines or drive a terminal.
        msg = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), msg)
        if msg != record.msg or record.args:
            record.msg, record.args = msg, None
        return True


#: The filter on every handler :func:`setup_logging` installs. A service masks what it
#: receives through its own :meth:`PhiFilter.open_scope`, closed when it stops.
PHI_FILTER = PhiFilter()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _std = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in self._std and not k.startswith("_"):
                out[k] = v if isinstance(v, str | int | float | bool | None) else str(v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None,
                  file: str | os.PathLike[str] | None = None) -> None:
    """Configure the root logger once; calling it again replaces the previous setup."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_amagi", False):
            root.removeHandler(h)
            h.close()
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                      "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if file:
        handlers.append(logging.FileHandler(file, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(formatter)
        h.addFilter(PHI_FILTER)
        h._amagi = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("pynetdicom", "PIL", "matplotlib", "fontTools", "alembic", "highdicom"):
        logging.getLogger(noisy).setLevel("DEBUG" if level == "debug" else "WARNING")
