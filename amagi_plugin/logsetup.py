"""One logging setup for the whole program: text for people, JSON lines for machines.

Patient names and IDs never reach a log: code logs UIDs only, and as a second line of
defence :class:`PhiFilter` masks any value registered with :func:`register_phi` (the
listener registers each received instance's PatientName and PatientID).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import TextIO

REDACTED = "[redacted]"
#: C0/C1 control characters (newline included) and DEL, escaped in every log message.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class PhiFilter(logging.Filter):
    """Masks registered patient identifiers in every record (bounded LRU of values)."""

    def __init__(self, capacity: int = 4096) -> None:
        super().__init__()
        self._values: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def register(self, *values: object) -> None:
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

    def scrub(self, text: str) -> str:
        """``text`` with every registered value masked where it stands as a whole value:
        never inside a longer word or number, nor a component of a UID ("1.2.840.12345")."""
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for v in values:
            if v in text:
                text = re.sub(rf"(?<!\w)(?<!\w\.){re.escape(v)}(?!\w)(?!\.\w)", REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if self._values:
            msg = self.scrub(msg)
        # A peer's bytes (AE titles, reasons) must not forge log lines or drive a terminal.
        msg = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), msg)
        if msg != record.msg or record.args:
            record.msg, record.args = msg, None
        return True


PHI_FILTER = PhiFilter()


def register_phi(*values: object) -> None:
    """Never let these values (patient name, ID) appear in a log line."""
    PHI_FILTER.register(*values)


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
                  file: str = "") -> None:
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
    for noisy in ("pynetdicom", "PIL", "matplotlib", "alembic", "highdicom"):
        logging.getLogger(noisy).setLevel("DEBUG" if level == "debug" else "WARNING")
