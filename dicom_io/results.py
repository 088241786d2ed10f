"""Plain descriptions of what the result writers put into DICOM (no torch, no database).

Times are in seconds from the first frame of the video (frame 1 is at 0 s); frame numbers
are 1-based DICOM frame numbers (PS3.3 C.7.6.6). Values are normalised on construction so
that they survive a DICOM DS round trip exactly: times to 1 ms, probabilities to 1e-4.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import generate_uid

from dicom_io.errors import WriterError

#: Required wording on everything made with the project's demo weights (DICOM objects,
#: reports, the demo model's own files); the one spelling, imported wherever it is shown.
DEMO_DISCLAIMER = "demo model trained on synthetic data; not for clinical use"
#: Manufacturer of every object we write, and of the algorithm (General Equipment, TID 4019).
MANUFACTURER = "AMAGI workstation plugin"

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_CHUNK = 1 << 20

TIME_DECIMALS = 3
PROBABILITY_DECIMALS = 4


class InvalidResultError(WriterError, ValueError):
    """A result description or writer argument is invalid (names the argument and value)."""


class WeightsKind(str, enum.Enum):
    """Where the model weights come from: the one vocabulary of the model spec, the DICOM
    results and the case database (stored as its value). Reads, prints and compares as its
    string value."""

    AUTHORS = "authors"  # the authors' published checkpoints
    DEMO_SYNTHETIC = "demo-synthetic"  # the project's demo model, trained on synthetic data
    USER = "user"  # weights trained by the user

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__

    @classmethod
    def coerce(cls, value: WeightsKind | str) -> WeightsKind:
        """Return ``value`` as a :class:`WeightsKind`; raise :class:`InvalidResultError`."""
        try:
            return cls(value)
        except ValueError as e:
            allowed = ", ".join(repr(m.value) for m in cls)
            raise InvalidResultError(f"weights must be one of {allowed}, got {value!r}") from e


def _number(name: str, value: object, decimals: int, low: float = 0.0,
            high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidResultError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidResultError(f"{name} must be finite and within [{low}, {high}], got {value!r}")
    return round(value, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0


def _frame(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidResultError(f"{name} must be a 1-based frame number (int >= 1), got {value!r}")
    return int(value)


@dataclass(frozen=True)
class BleedingEvent:
    """One active-bleeding event found in a video.

    Parameters
    ----------
    start_s, end_s : float
        Start and end of the event in seconds from the first frame (``end_s >= start_s``).
    duration_s : float
        Duration in seconds (the analysis decides whether it includes the last frame).
    start_frame, end_frame : int
        1-based frame numbers of the first and last frame of the event.
    key_frame : int
        1-based frame number of the representative frame, within the event.
    peak_probability, mean_probability : float
        Highest and mean bleeding probability over the event, in [0, 1].
    """

    start_s: float
    end_s: float
    duration_s: float
    start_frame: int
    end_frame: int
    key_frame: int
    peak_probability: float
    mean_probability: float

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "start_s", _number("start_s", self.start_s, TIME_DECIMALS))
        put(self, "end_s", _number("end_s", self.end_s, TIME_DECIMALS))
        put(self, "duration_s", _number("duration_s", self.duration_s, TIME_DECIMALS))
        if self.end_s < self.start_s:
            raise InvalidResultError(f"end_s ({self.end_s}) is before start_s ({self.start_s})")
        for name in ("start_frame", "end_frame", "key_frame"):
            put(self, name, _frame(name, getattr(self, name)))
        if not self.start_frame <= self.key_frame <= self.end_frame:
            raise InvalidResultError(
                f"key_frame {self.key_frame} is outside frames {self.start_frame}-{self.end_frame}")
        for name in ("peak_probability", "mean_probability"):
            put(self, name, _number(name, getattr(self, name), PROBABILITY_DECIMALS, 0.0, 1.0))
        if self.mean_probability > self.peak_probability:
            raise InvalidResultError(f"mean_probability {self.mean_probability} exceeds "
                                     f"peak_probability {self.peak_probability}")


@dataclass(frozen=True)
class CaseIndex:
    """Case-level bleeding indices of one analysed video, computed once by
    :meth:`from_events` and passed on to every consumer (SR, report, case database).

    With no event, the count is 0 and the total duration 0 s, while the mean and longest
    duration and the first bleeding are undefined: ``None`` here, no measurement in the SR,
    ``NULL`` in the case database (never 0 s, which would read as a measured value).

    Parameters
    ----------
    event_count : int
        Number of bleeding events (>= 0).
    total_duration_s : float
        Sum of event durations in seconds.
    mean_duration_s, max_duration_s : float or None
        Mean and longest event duration in seconds; ``None`` when there is no event.
    first_bleed_s : float or None
        Start of the first event in seconds; ``None`` when there is no event.
    video_duration_s : float
        Duration of the analysed video in seconds.
    """

    event_count: int
    total_duration_s: float
    mean_duration_s: float | None
    max_duration_s: float | None
    first_bleed_s: float | None
    video_duration_s: float

    def __post_init__(self) -> None:
        put = object.__setattr__
        n = self.event_count
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidResultError(f"event_count must be an int >= 0, got {n!r}")
        put(self, "total_duration_s", _number("total_duration_s", self.total_duration_s,
                                              TIME_DECIMALS))
        put(self, "video_duration_s", _number("video_duration_s", self.video_duration_s,
                                              TIME_DECIMALS))
        for name in ("mean_duration_s", "max_duration_s", "first_bleed_s"):
            value = getattr(self, name)
            if n == 0 and value is not None:
                raise InvalidResultError(f"{name} must be None when event_count is 0, got {value!r}")
            if n > 0:
                if value is None:
                    raise InvalidResultError(f"{name} is required when event_count is {n}")
                put(self, name, _number(name, value, TIME_DECIMALS))
        if n == 0 and self.total_duration_s != 0.0:
            raise InvalidResultError(
                f"total_duration_s must be 0 when event_count is 0, got {self.total_duration_s}")

    @classmethod
    def from_events(cls, events: Sequence[BleedingEvent], video_duration_s: float) -> CaseIndex:
        """Compute the indices of ``events`` (durations in seconds)."""
        durations = [e.duration_s for e in events]
        if not durations:
            return cls(0, 0.0, None, None, None, video_duration_s)
        return cls(
            event_count=len(durations),
            total_duration_s=sum(durations),
            mean_duration_s=sum(durations) / len(durations),
            max_duration_s=max(durations),
            first_bleed_s=min(e.start_s for e in events),
            video_duration_s=video_duration_s,
        )


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a UID string per PS3.5 §9.1 (digits and dots, <= 64 chars)."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def weights_device_uid(path: str | os.PathLike[str]) -> str:
    """Device UID of an algorithm, derived from the contents of its weights file.

    The first 128 bits of the file's SHA-256, made a version-8 UUID (RFC 9562), written
    as a ``2.25`` UID (PS3.5 B.2): the same file always gives the same UID, and a
    retrained checkpoint (different bytes) a different one, as IHE AI Results asks of
    the Device UID in the Contributing Equipment Sequence.

    Parameters
    ----------
    path : path-like
        The checkpoint file (read in 1 MiB chunks; its size does not matter).

    Raises
    ------
    InvalidResultError
        When the file cannot be read.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidResultError(f"cannot read the weights file {os.fspath(path)!r}: {e}") from e
    # Every analysed video asks; the file is hashed once per version of it on disk.
    return _device_uid_of(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _device_uid_of(path: str, size: int, mtime_ns: int) -> str:
    """:func:`weights_device_uid` of the file at ``path`` as it was at ``(size, mtime_ns)``."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise InvalidResultError(f"cannot read the weights file {path!r}: {e}") from e
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8 (custom)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    return f"2.25.{uuid.UUID(bytes=bytes(raw)).int}"


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the algorithm that produced the results (TID 4019, IHE AIR).

    Parameters
    ----------
    name, version : str
        Algorithm name and version (1-64 characters, no backslash); written as the
        Manufacturer's Model Name and Software Versions of the algorithm's equipment.
    weights : WeightsKind or str
        ``'authors'`` (published checkpoints), ``'demo-synthetic'`` (the project's demo
        model trained on synthetic data) or ``'user'`` (weights trained by the user).
    description : str
        Free-text description (up to 1024 characters).
    device_uid : str, optional
        Device UID of the algorithm (PS3.3 C.7.5.1), normally :func:`weights_device_uid`
        of its checkpoint; when omitted, a UID derived from :data:`MANUFACTURER`, name
        and version (the same for every checkpoint of that name and version).
    """

    name: str
    version: str
    weights: WeightsKind | str = WeightsKind.USER
    description: str = ""
    device_uid: str | None = None

    def __post_init__(self) -> None:
        for attr, limit in (("name", 64), ("version", 64), ("description", 1024)):
            value = getattr(self, attr)
            if not isinstance(value, str) or "\\" in value or len(value) > limit:
                raise InvalidResultError(
                    f"{attr} must be a string of at most {limit} characters without '\\', "
                    f"got {value!r}")
        if not self.name.strip() or not self.version.strip():
            raise InvalidResultError(f"name and version must not be empty, got "
                                     f"{self.name!r}, {self.version!r}")
        object.__setattr__(self, "weights", WeightsKind.coerce(self.weights))
        if self.device_uid is None:
            object.__setattr__(self, "device_uid", str(generate_uid(
                entropy_srcs=[MANUFACTURER, self.name, self.version])))
        elif not is_valid_uid(self.device_uid):
            raise InvalidResultError(f"device_uid is not a valid DICOM UID: {self.device_uid!r}")

    @property
    def disclaimer(self) -> str | None:
        """:data:`DEMO_DISCLAIMER` for demo weights, else ``None``."""
        return DEMO_DISCLAIMER if self.weights is WeightsKind.DEMO_SYNTHETIC else None


@dataclass(frozen=True)
class InstanceRef:
    """Identity of a written (or referenced) DICOM instance.

    ``path`` is where the writer saved it, ``None`` for references to instances elsewhere.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class BleedingReport:
    """What :func:`dicom_io.sr.read_bleeding_report` recovers from one of our SRs.

    ``source`` is the analysed video, ``predecessors`` the SRs this one supersedes.
    """

    events: tuple[BleedingEvent, ...]
    index: CaseIndex
    algorithm: AlgorithmInfo
    source: InstanceRef
    instance: InstanceRef
    predecessors: tuple[InstanceRef, ...] = ()
