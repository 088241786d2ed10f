"""Intake of ``amagi serve``: what the listener receives becomes recorded instances and jobs.

Each C-STORE is recorded from the :class:`~dicom_io.net.records.StoredInstance` the listener
built from the header it read (nothing reads the file again). A video instance's job is
queued when the association that brought it ends; the images of a single-frame series share
one job, queued when the series is complete (Images in Acquisition) or quiet for
``worker.series_timeout_s`` (:class:`SeriesTracker`).

Images of one series may arrive on several associations at once. Each image is recorded,
and its series' job looked up or created, under a lock of that series held until the
image's transaction commits: two first images never create two jobs, and no image releases
a job that another one's uncommitted transaction is still creating. (SQLite's write lock
already serialises intake; PostgreSQL's transactions run side by side.)
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from amagi_plugin.config import Config
from amagi_plugin.modelspec import ModelSpec
from amagi_plugin.service.metrics import Metrics
from db import Database
from db.queue import enqueue, release
from db.records import record_instance
from dicom_io.net.records import AssociationSummary, StoredInstance
from dicom_io.sopclasses import INPUT_SOP_CLASSES

log = logging.getLogger(__name__)


def record_stored(session, inst: StoredInstance, store_patient_id: bool) -> None:
    """Record a spooled instance in the case store, however it arrived (C-STORE, or
    ``amagi poll``'s DICOMweb retrieval, which has no calling AE)."""
    record_instance(
        session, sop_instance_uid=inst.sop_instance_uid, sop_class_uid=inst.sop_class_uid,
        transfer_syntax_uid=inst.transfer_syntax, study_instance_uid=inst.study_instance_uid,
        series_instance_uid=inst.series_instance_uid, size_bytes=inst.size_bytes,
        spool_path=str(inst.path), calling_ae=inst.calling_ae or None,
        received_at=inst.received_at, study_date=inst.study_date,
        study_description=inst.study_description, modality=inst.modality,
        series_description=inst.series_description, number_of_frames=inst.number_of_frames,
        patient_id=inst.patient_id, store_patient_id=store_patient_id)


@dataclass
class SeriesProgress:
    """One single-frame series being received: its job and how far it got.

    Attributes
    ----------
    job_id : int
        The series' job (enqueued with its first image, not yet released).
    last_seen : float
        ``time.monotonic()`` of its latest image.
    expected : int or None
        Images in Acquisition, once an image gave it.
    received : int
        Images received so far.
    """

    job_id: int
    last_seen: float
    expected: int | None = None
    received: int = 0

    @property
    def complete(self) -> bool:
        """Images in Acquisition is known and that many images are in."""
        return self.expected is not None and 0 < self.expected <= self.received


class SeriesTracker:
    """The single-frame series being received, by Series Instance UID (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[str, SeriesProgress] = {}

    def job_of(self, series_uid: str) -> int | None:
        """The job of a series being received, ``None`` for a series not (or no longer)
        tracked."""
        with self._lock:
            entry = self._series.get(series_uid)
            return None if entry is None else entry.job_id

    def add_image(self, series_uid: str, job_id: int, expected: int | None) -> SeriesProgress:
        """Count one image of ``series_uid`` (whose job is ``job_id``); returns its progress,
        no longer tracked when that makes it complete."""
        with self._lock:
            entry = self._series.setdefault(series_uid, SeriesProgress(job_id, self._clock()))
            entry.last_seen = self._clock()
            entry.expected = entry.expected or expected
            entry.received += 1
            if entry.complete:
                del self._series[series_uid]
            return SeriesProgress(entry.job_id, entry.last_seen, entry.expected, entry.received)

    def pop_quiet(self, timeout_s: float) -> list[tuple[str, int]]:
        """``(series UID, job)`` of each series with no image for ``timeout_s``, no longer
        tracked."""
        now = self._clock()
        with self._lock:
            quiet = [(uid, e.job_id) for uid, e in self._series.items()
                     if now - e.last_seen >= timeout_s]
            for uid, _ in quiet:
                del self._series[uid]
        return quiet


_SERIES_LOCKS = 64  # series whose UIDs share a lock only wait for each other's commits


class Intake:
    """Records received instances and queues their jobs (the listener's callbacks).

    ``database`` is set once the service has opened it; ``jobs_queued`` is set whenever a
    job becomes runnable, so that idle workers wake up.
    """

    def __init__(self, cfg: Config, spec: ModelSpec, metrics: Metrics,
                 jobs_queued: threading.Event) -> None:
        self.cfg = cfg
        self.spec = spec
        self.metrics = metrics
        self.jobs_queued = jobs_queued
        self.database: Database | None = None
        self.series = SeriesTracker()
        self._pending: dict[str, int] = {}  # SOP instance UID → job waiting for its association
        self._lock = threading.Lock()
        self._series_locks = tuple(threading.Lock() for _ in range(_SERIES_LOCKS))

    def _series_lock(self, inst: StoredInstance) -> threading.Lock:
        """The lock of ``inst``'s series (one of a fixed set, chosen by the UID's CRC)."""
        key = zlib.crc32(inst.series_instance_uid.encode())
        return self._series_locks[key % len(self._series_locks)]

    def on_stored(self, inst: StoredInstance) -> None:
        """Record the instance (the C-STORE succeeds only if this returns) and queue its job."""
        assert self.database is not None
        self.metrics.inc("amagi_received_bytes_total", inst.size_bytes)
        self.metrics.inc("amagi_received_instances_total")
        series_frame = inst.sop_class_uid in INPUT_SOP_CLASSES and inst.is_series_frame
        # a series' lock is taken before its session and let go after the commit
        lock = self._series_lock(inst) if series_frame else nullcontext()
        with lock, self.database.session(write=True) as s:
            record_stored(s, inst, self.cfg.database.store_patient_id)
            if inst.sop_class_uid not in INPUT_SOP_CLASSES:
                return  # a result object sent back to us: stored, not analysed
            if series_frame:
                self._add_series_image(s, inst)
                return
            job = self._enqueue(s, inst)
        if job.created or job.requeued:
            with self._lock:
                self._pending[inst.sop_instance_uid] = job.job_id
            if job.requeued:
                log.info("instance %s received again; its job %d had failed and is queued "
                         "again when the association ends", inst.sop_instance_uid, job.job_id)
        else:
            log.info("instance %s already analysed with %s: no new job",
                     inst.sop_instance_uid, self.spec.label)

    def _enqueue(self, session, inst: StoredInstance):
        return enqueue(session, inst.sop_instance_uid, model_name=self.spec.name,
                       model_version=self.spec.version,
                       max_attempts=self.cfg.worker.max_attempts, ready=False)

    def _add_series_image(self, session, inst: StoredInstance) -> None:
        """Single-frame images: one job per series, released when complete or quiet."""
        job_id = self.series.job_of(inst.series_instance_uid)
        if job_id is None:
            job_id = self._enqueue(session, inst).job_id
        progress = self.series.add_image(inst.series_instance_uid, job_id,
                                         inst.images_in_acquisition)
        if progress.complete:
            release(session, progress.job_id)
            self.jobs_queued.set()
            log.info("series %s complete (%d images): job %d queued", inst.series_instance_uid,
                     progress.received, progress.job_id)

    def on_released(self, summary: AssociationSummary) -> None:
        """A video instance becomes a job when the association that brought it ends."""
        assert self.database is not None
        with self._lock:
            jobs = [self._pending.pop(i.sop_instance_uid) for i in summary.instances
                    if i.sop_instance_uid in self._pending]
        if not jobs:
            return
        with self.database.session(write=True) as s:
            for job_id in jobs:
                release(s, job_id)
        self.jobs_queued.set()
        log.info("association from %s %s: %d job(s) queued", summary.calling_ae,
                 "aborted" if summary.aborted else "released", len(jobs))

    def watch_series(self, stop: threading.Event) -> None:
        """Queue the job of each series quiet for ``worker.series_timeout_s``, until ``stop``."""
        timeout = self.cfg.worker.series_timeout_s
        while not stop.wait(min(1.0, timeout / 4)):
            quiet = self.series.pop_quiet(timeout)
            if quiet and self.database is not None:
                with self.database.session(write=True) as s:
                    for uid, job_id in quiet:
                        release(s, job_id)
                        log.info("series %s quiet for %.0f s: job %d queued", uid, timeout, job_id)
                self.jobs_queued.set()
