"""Workers: claim a job, run the pipeline, record the case and owe its results to destinations.

A claimed job holds a lease that a heartbeat thread renews; if the process dies, the lease
runs out and any worker takes the job again. The run's outputs go to a per-job directory
that a new attempt clears first, and the run, its objects and their deliveries are recorded
in one transaction with the job's completion: a destination only ever receives the objects
of the one attempt that committed.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.exc import OperationalError

from amagi_plugin.errors import InputError
from amagi_plugin.modelspec import ModelSpec
from amagi_plugin.pipeline import BleedingAnalyzer
from amagi_plugin.process import ProcessOutcome, process_video
from amagi_plugin.service.metrics import Metrics
from db import Database, LeaseLostError
from db.deliveries import schedule_delivery
from db.queue import ClaimedJob, claim_next, complete, fail, heartbeat
from db.records import latest_report, record_object, record_run
from db.schema import utcnow
from dicom_io.results import InstanceRef
from dicom_io.sopclasses import (
    COMPREHENSIVE_3D_SR,
    COMPREHENSIVE_SR,
    ENCAPSULATED_PDF,
    KEY_OBJECT_SELECTION,
    SEGMENTATION,
    VL_ENDOSCOPIC,
)

log = logging.getLogger(__name__)

# InstanceRef.sop_class_uid → db ObjectKind value
_KINDS = {COMPREHENSIVE_3D_SR: "sr", COMPREHENSIVE_SR: "sr", SEGMENTATION: "seg",
          KEY_OBJECT_SELECTION: "kos", VL_ENDOSCOPIC: "key_image", ENCAPSULATED_PDF: "pdf"}


#: Longest wait (s) between two tries to record an outcome the database refused.
MAX_RECORD_BACKOFF_S = 60.0


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:w{index}"


def is_permanent(error: BaseException) -> bool:
    """``True`` for input no attempt can ever analyse (too few frames, no pixel data, an
    unreadable stream): the job fails once, at once, instead of being retried."""
    return isinstance(error, InputError)


def error_text(error: BaseException, spool_path: str | None = None) -> str:
    """A job's error line, cause first: the exception's message without the spool path
    that dicom_io puts in front of it (``"/var/spool/…/x.dcm: no Pixel Data element"``)."""
    text = str(error).strip() or type(error).__name__
    if spool_path:
        text = text.replace(f"{spool_path}: ", "").replace(spool_path, Path(spool_path).name)
    cause = error.__cause__ if isinstance(error, InputError) and error.__cause__ else error
    return f"{text} ({type(cause).__name__})"


@dataclass(frozen=True)
class WorkerHealth:
    """What ``amagi status`` shows of one worker thread.

    Attributes
    ----------
    name : str
        ``host:pid:wN``.
    alive : bool
        The thread is running.
    state : str
        ``"idle"``, ``"running job N"``, ``"recording job N"`` or ``"backing off"``.
    jobs_finished : int
        Jobs this thread ended (done or failed).
    restarts : int
        Times the supervisor replaced a dead thread in this slot.
    last_error : str or None
        The last error the loop itself met (not a job's failure).
    """

    name: str
    alive: bool
    state: str
    jobs_finished: int
    restarts: int
    last_error: str | None


class Worker(threading.Thread):
    """One worker thread; several share the model (inference is read-only)."""

    def __init__(self, index: int, database: Database, analyzer: BleedingAnalyzer, spec: ModelSpec,
                 results_dir: Path, destinations: Sequence[str], lease_s: float,
                 stop: threading.Event, metrics: Metrics | None = None, poll_s: float = 1.0,
                 on_job_done: Callable[[int], None] | None = None,
                 wakeup: threading.Event | None = None) -> None:
        super().__init__(name=f"amagi-worker-{index}", daemon=True)
        self.ident_name = worker_name(index)
        self.database = database
        self.analyzer = analyzer
        self.spec = spec
        self.results_dir = results_dir
        self.destinations = list(destinations)
        self.lease_s = lease_s
        self.stop_event = stop
        self.metrics = metrics
        self.poll_s = poll_s
        self.on_job_done = on_job_done
        self.wakeup = wakeup or threading.Event()  # set when a job is queued: no poll delay
        self.index = index
        self.state = "starting"
        self.jobs_finished = 0
        self.restarts = 0
        self.last_error: str | None = None

    def health(self) -> WorkerHealth:
        """A snapshot of this thread's health."""
        return WorkerHealth(self.ident_name, self.is_alive(), self.state, self.jobs_finished,
                            self.restarts, self.last_error)

    def run(self) -> None:
        """Claim and run jobs until stopped; nothing raised by one job ends the loop."""
        try:
            self._loop()
        except BaseException as e:  # the thread ends: say why, for the supervisor's log
            self.last_error = f"thread ended: {type(e).__name__}: {e}"
            self.state = "dead"
            raise

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            self.state = "idle"
            try:
                with self.database.session() as s:
                    job = claim_next(s, self.ident_name, self.lease_s,
                                     model_version=self.spec.version)
            except Exception as e:
                self._loop_error("cannot claim a job", e)
                self.stop_event.wait(self.poll_s * 5)
                continue
            if job is None:
                if self.wakeup.wait(self.poll_s):
                    self.wakeup.clear()
                continue
            try:
                self.run_job(job)
            except Exception as e:  # a bug: keep the thread, the lease hands the job on
                self._loop_error(f"job {job.job_id} ended unexpectedly", e)
                self.stop_event.wait(self.poll_s)

    def _loop_error(self, what: str, e: BaseException) -> None:
        self.last_error = f"{what}: {type(e).__name__}: {e}"
        self.state = "backing off"
        log.error("%s %s: %s: %s; retrying", self.name, what, type(e).__name__, e,
                  exc_info=log.isEnabledFor(logging.DEBUG))

    def run_job(self, job: ClaimedJob) -> None:
        self.state = f"running job {job.job_id}"
        log.info("job %d: attempt %d/%d on %s", job.job_id, job.attempt, job.max_attempts,
                 job.sop_instance_uid)
        lost = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, lost), daemon=True,
                                name=f"amagi-heartbeat-{job.job_id}")
        done = threading.Event()
        beat.done = done  # type: ignore[attr-defined]
        beat.start()
        started = datetime.now(timezone.utc)
        try:
            try:
                outcome = self._analyse(job)
                if lost.is_set():
                    raise LeaseLostError(f"job {job.job_id}: lease lost during the analysis")
            except LeaseLostError:
                raise
            except Exception as e:
                self._record_failure(job, e)
                return
            self.state = f"recording job {job.job_id}"
            try:
                self._with_retries(job, "record the results of",
                                   lambda: self._commit(job, outcome, started))
            except LeaseLostError:
                raise
            except Exception as e:  # not recordable at all: count it as a failed attempt
                self._record_failure(job, e)
                return
            self.jobs_finished += 1
            self._count("amagi_jobs_total", state="done")
            for stage, seconds in outcome.result.timings.items():
                self._count("amagi_stage_seconds_total", seconds, stage=stage)
            log.info("job %d done: %d event(s)", job.job_id, outcome.result.index.event_count)
        except LeaseLostError as e:
            log.warning("%s; another worker owns it now", e)
        finally:
            done.set()
            beat.join(timeout=5)
            if self.on_job_done:
                self.on_job_done(job.job_id)

    def _record_failure(self, job: ClaimedJob, e: BaseException) -> None:
        """Record a failed attempt (retrying the database until it takes it)."""
        permanent = is_permanent(e)
        text = error_text(e, job.spool_path)
        log.warning("job %d failed (attempt %d/%d%s): %s", job.job_id, job.attempt,
                    job.max_attempts, ", not retried: the input can never succeed"
                    if permanent else "", text, exc_info=log.isEnabledFor(logging.DEBUG))
        self.state = f"recording job {job.job_id}"

        def record():
            with self.database.session(write=True) as s:
                return fail(s, job.job_id, self.ident_name, text, permanent=permanent,
                            retry_delay_s=min(300.0, 10.0 * 2 ** (job.attempt - 1)))

        try:
            state = self._with_retries(job, "record the failure of", record)
        except LeaseLostError:
            return
        self.jobs_finished += 1
        self._count("amagi_jobs_total", state=str(getattr(state, "value", state)))

    def _with_retries(self, job: ClaimedJob, what: str, action):
        """Run ``action`` until it succeeds, backing off (1 s doubling to
        :data:`MAX_RECORD_BACKOFF_S`) while the database refuses it for a passing reason
        (full disk, locked, unreachable: ``OperationalError``, ``OSError``). Other errors,
        and the last one once stopping, pass through.
        """
        delay = 1.0
        while True:
            try:
                return action()
            except (OperationalError, OSError) as e:
                if self.stop_event.is_set():
                    raise
                self.last_error = f"cannot {what} job {job.job_id}: {type(e).__name__}: {e}"
                log.error("%s; retrying in %.0f s", self.last_error, delay)
                self.stop_event.wait(delay)
                delay = min(MAX_RECORD_BACKOFF_S, delay * 2)

    def _heartbeat(self, job: ClaimedJob, lost: threading.Event) -> None:
        done: threading.Event = threading.current_thread().done  # type: ignore[attr-defined]
        while not done.wait(max(1.0, self.lease_s / 3)):
            try:
                with self.database.session(write=True) as s:
                    heartbeat(s, job.job_id, self.ident_name, self.lease_s)
            except LeaseLostError:
                lost.set()
                return
            except Exception:
                log.exception("job %d: heartbeat failed", job.job_id)

    def _analyse(self, job: ClaimedJob) -> ProcessOutcome:
        out = self.results_dir / f"job-{job.job_id}"
        if out.exists():  # a previous attempt died half-way: its files were never recorded
            shutil.rmtree(out)
        with self.database.session() as s:
            prev = latest_report(s, job.sop_instance_uid, exclude_job_id=job.job_id)
        predecessor = InstanceRef(*prev) if prev else None
        source: Path | list[Path] = ([Path(p) for p in job.series_paths] if job.series_paths
                                     else Path(job.spool_path))
        return process_video(source, out, self.analyzer, self.spec, predecessor=predecessor)

    def _commit(self, job: ClaimedJob, outcome: ProcessOutcome, started: datetime) -> None:
        result = outcome.result
        opts = self.analyzer.options
        with self.database.session(write=True) as s:
            run = record_run(
                s, job.job_id, weights_kind=self.spec.weights, events=result.events,
                index=result.index,
                parameters={"prediction_hz": opts.prediction_hz, "threshold": opts.threshold,
                            "smoothing": opts.smoothing, "smoothing_s": opts.smoothing_s,
                            "hold_threshold": opts.hold_threshold,
                            "arch": self.spec.arch, "bf16": opts.bf16, "fast": opts.fast},
                timings={k: round(v, 3) for k, v in result.timings.items()},
                started_at=started, finished_at=datetime.now(timezone.utc))
            owed_at = utcnow()  # one time for all: a sender takes the run's objects together
            for ref in outcome.dicom_objects:
                obj = record_object(s, run.id, kind=_KINDS[ref.sop_class_uid],
                                    sop_class_uid=ref.sop_class_uid,
                                    sop_instance_uid=ref.sop_instance_uid, path=str(ref.path),
                                    series_instance_uid=ref.series_instance_uid)
                for dest in self.destinations:
                    schedule_delivery(s, obj.id, dest, now=owed_at)
            complete(s, job.job_id, self.ident_name)

    def _count(self, name: str, value: float = 1.0, **labels: str) -> None:
        if self.metrics:
            self.metrics.inc(name, value, **labels)

