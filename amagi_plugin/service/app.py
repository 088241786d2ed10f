"""Wiring of ``amagi serve``: listener, queue, workers, deliveries and metrics.

``service.role`` splits them over processes: ``all`` (the default) runs everything in one
process; ``listener`` only receives, records and queues; ``worker`` only analyses and
delivers. Processes of several roles, on several hosts, share one PostgreSQL database (the
queue, with its leases and claims) and one storage directory (the spool and the results).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom

from amagi_plugin.config import Config, Destination
from amagi_plugin.errors import AmagiError, ConfigError
from amagi_plugin.logsetup import register_phi
from amagi_plugin.modelspec import ModelSpec
from amagi_plugin.pipeline import BleedingAnalyzer
from amagi_plugin.service import HEALTH_FILE, pid_alive
from amagi_plugin.service.delivery import DeliveryLoop
from amagi_plugin.service.metrics import Metrics, MetricsServer
from amagi_plugin.service.worker import Worker
from db import Database, open_database
from db.engine import sqlite_file
from db.queue import enqueue, expire_dead_leases, job_counts, received_jobs, release
from db.records import record_instance
from db.workers import Beat, beat, mark_stopped, register, stop_dead
from dicom_io.net.records import AssociationSummary, StoredInstance
from dicom_io.sopclasses import INPUT_SOP_CLASSES, VL_ENDOSCOPIC

log = logging.getLogger(__name__)

#: File in the var directory where the running service publishes its workers' health.
#: Seconds between two supervisor rounds (dead worker check, health file).
SUPERVISE_S = 1.0


class _IncomingTempdir:
    """Points :data:`tempfile.tempdir` at the spool's ``.incoming`` of a running service.

    pynetdicom streams each C-STORE to a temporary file in the default temporary directory
    before our handler runs; keeping that on the spool's filesystem makes placing it a
    rename. The setting is process-wide, so with several services in one process (tests,
    benchmarks) it follows the newest one still running, and returns to what it was before
    the first once the last stops, whatever order they stop in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: list[tuple[int, str]] = []  # (id of the service, its incoming dir)
        self._before: str | None = None

    def claim(self, owner: object, incoming: Path) -> None:
        with self._lock:
            if not self._active:
                self._before = tempfile.tempdir
            self._active.append((id(owner), str(incoming)))
            tempfile.tempdir = str(incoming)

    def release(self, owner: object) -> None:
        with self._lock:
            was = len(self._active)
            self._active = [a for a in self._active if a[0] != id(owner)]
            if len(self._active) != was:
                tempfile.tempdir = self._active[-1][1] if self._active else self._before


_INCOMING_TEMPDIR = _IncomingTempdir()


class StartupError(AmagiError):
    """The service cannot start (full disk, ...); the message is the one line to show."""


#: Roles that run in several processes sharing one database.
SHARED_ROLES = ("listener", "worker")


def check_role_database(cfg: Config) -> None:
    """Refuse SQLite for the ``listener`` and ``worker`` roles, with the reason.

    Raises
    ------
    ConfigError
        ``service.role`` is ``listener`` or ``worker`` and the database is SQLite.
    """
    role = cfg.service.role
    if role not in SHARED_ROLES:
        return
    url = cfg.database_url
    if url.startswith("sqlite") or sqlite_file(url) is not None:
        raise ConfigError(
            f"service.role = {role} shares the job queue with other processes and hosts: it "
            "needs PostgreSQL (--database-url postgresql+psycopg://USER@HOST/DB); SQLite "
            "cannot be reached from another host and its locking does not hold on network "
            "filesystems (use --role all with SQLite)")


def _study_date(value: str | None) -> dt.date | None:
    try:
        return dt.datetime.strptime(value or "", "%Y%m%d").date()
    except ValueError:
        return None


class Service:
    """The plugin as a DICOM node.

    ``start()`` opens (and migrates) the database, releases jobs whose association ended
    before a restart, starts the workers, the delivery loop, the series watcher, the
    optional metrics endpoint and finally the listener; ``stop()`` reverses that.

    ``analyzer``: one analyzer that ``worker.count`` workers share, or one per device
    (``worker.devices``), each shared by ``worker.count`` workers; none for the ``listener``
    role (it queues jobs for ``spec`` and never analyses).

    ``service.role`` chooses what runs (see the module): ``listener`` never starts workers or
    deliveries, ``worker`` never binds the DICOM port. Every thread registers in the database
    and heartbeats every ``service.heartbeat_s`` (``amagi status`` lists them).
    """

    def __init__(self, cfg: Config, analyzer: BleedingAnalyzer | Sequence[BleedingAnalyzer],
                 spec: ModelSpec, environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        # Where DICOMweb destinations' passwords and tokens are read (os.environ by default).
        self.environ = os.environ if environ is None else environ
        self.analyzers = list(analyzer) if isinstance(analyzer, Sequence) else [analyzer]
        self.role = cfg.service.role
        self.listens = self.role in ("all", "listener")
        self.analyses = self.role in ("all", "worker")
        if self.analyses and not self.analyzers:
            raise ValueError(f"role {self.role} analyses: it needs an analyzer")
        self.analyzer = self.analyzers[0] if self.analyzers else None
        self.spec = spec
        self.stop_event = threading.Event()
        self.metrics = Metrics()
        self.database: Database | None = None
        self.listener = None
        self.workers: list[Worker] = []
        self.delivery: DeliveryLoop | None = None
        self.metrics_server: MetricsServer | None = None
        self._pending: dict[str, int] = {}  # SOP instance UID → job waiting for its association
        self._series: dict[str, tuple[int, float, int | None, int]] = {}  # uid → job, last, expected, n
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._jobs_queued = threading.Event()
        self._results_ready = threading.Event()
        self._registered: list[str] = []  # names of this process's rows in the workers table
        self._next_beat = 0.0
        self._describe_metrics()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        check_role_database(cfg)
        try:
            for d in (cfg.var_dir, cfg.spool_dir, cfg.results_dir):
                Path(d).mkdir(parents=True, exist_ok=True)
            self._check_free_space()
            self._check_secrets()
            # pynetdicom streams each C-STORE to a temporary file before our handler runs:
            # keep it on the spool's filesystem so that placing it is a rename, not a copy.
            incoming = self.incoming_dir
            if self.listens:
                incoming.mkdir(exist_ok=True)
        except OSError as e:
            raise StartupError(f"cannot start: {e.strerror or e} ({e.filename or cfg.var_dir})"
                               ) from e
        if self.listens:  # a worker sharing the spool must not touch a listener's uploads
            from dicom_io.net.spool import remove_partial_uploads

            remove_partial_uploads(Path(cfg.spool_dir), incoming)  # left by a previous run
            _INCOMING_TEMPDIR.claim(self, incoming)
        try:
            self.database = open_database(cfg.database_url)
            self._release_after_restart()
            if self.analyses:
                for i in range(cfg.worker.count * len(self.analyzers)):
                    self.workers.append(self._make_worker(i))
            self._register()
            for w in self.workers:
                w.start()
            supervisor = threading.Thread(target=self._supervise, name="amagi-supervisor",
                                          daemon=True)
            supervisor.start()
            self._threads.append(supervisor)
            if self.analyses:
                destinations = {d.key: d for d in cfg.delivery.destinations}
                self.delivery = DeliveryLoop(
                    self.database, destinations, self._send, cfg.delivery.retry_initial_s,
                    cfg.delivery.retry_max_s, self.stop_event, self.metrics,
                    wakeup=self._results_ready,
                    commit=self._commit if cfg.delivery.storage_commitment else None)
                self.delivery.start()
            if self.listens:
                watcher = threading.Thread(target=self._watch_series, name="amagi-series",
                                           daemon=True)
                watcher.start()
                self._threads.append(watcher)
            if cfg.metrics.enabled:
                self.metrics_server = MetricsServer(self.metrics, cfg.metrics.bind_address,
                                                    cfg.metrics.port)
                self.metrics_server.start()
                self.metrics.add_collector(self._job_gauges)
            if self.listens:
                self.listener = self._make_listener()
                self.listener.start()
        except BaseException:  # a half-started service stops what it started
            self.stop()
            raise
        where = (f"{cfg.listener.ae_title} on {cfg.listener.bind_address}:{self.listener.port}"
                 if self.listener is not None else "no listener")
        log.info("amagi serve (role %s): %s, model %s, %d worker(s), destinations: %s",
                 self.role, where, self.spec.label, len(self.workers),
                 (", ".join(str(d) for d in cfg.delivery.destinations)
                  or "none (results kept on disk)") if self.analyses else "none (not delivering)")

    @property
    def incoming_dir(self) -> Path:
        """Where pynetdicom streams data sets being received (on the spool filesystem)."""
        return Path(self.cfg.spool_dir) / ".incoming"

    def _check_free_space(self) -> None:
        """Refuse to start below the free-space reserve, with one line saying so."""
        reserve = self.cfg.storage.reserve_mb << 20
        for d in {Path(self.cfg.var_dir), Path(self.cfg.spool_dir)}:
            free = shutil.disk_usage(d).free
            if free < reserve:
                raise StartupError(
                    f"cannot start: {free >> 20} MiB free on the filesystem of {d}, below "
                    f"the reserve of {self.cfg.storage.reserve_mb} MiB (storage.reserve_mb); "
                    "free some space or lower the reserve")

    def _check_secrets(self) -> None:
        """Refuse to start when a DICOMweb destination's secret variable is not set."""
        for dest in self.cfg.delivery.destinations:
            self._web_auth(dest)

    def _web_auth(self, dest: Destination):
        """The credentials of a DICOMweb destination, read from the environment now."""
        from dicom_io.net.stow import WebAuth

        name = dest.secret_env()
        if name is None:
            return None
        secret = self.environ.get(name, "")
        if not secret:
            raise ConfigError(f"destination {dest.key}: environment variable {name} (its "
                               f"{'password' if dest.auth == 'basic' else 'token'}) is not set")
        if dest.auth == "basic":
            return WebAuth(username=dest.username, password=secret)
        return WebAuth(token=secret)

    def _make_worker(self, index: int, restarts: int = 0) -> Worker:
        assert self.database is not None
        cfg = self.cfg
        analyzer = self.analyzers[index % len(self.analyzers)]
        w = Worker(index, self.database, analyzer, self.spec, cfg.results_dir,
                   [d.key for d in cfg.delivery.destinations], cfg.worker.lease_s,
                   self.stop_event, self.metrics,
                   on_job_done=lambda _job: self._results_ready.set(),
                   wakeup=self._jobs_queued)
        w.restarts = restarts
        return w

    def _supervise(self) -> None:
        """Replace any worker thread that ended, publish the workers' health and heartbeat."""
        while not self.stop_event.wait(SUPERVISE_S):
            for i, w in enumerate(list(self.workers)):
                if w.is_alive() or self.stop_event.is_set():
                    continue
                log.error("worker %s ended (%s); starting a new one", w.name,
                          w.last_error or "no error recorded")
                new = self._make_worker(w.index, w.restarts + 1)
                new.last_error = w.last_error
                new.start()
                self.workers[i] = new
            if self.role == "all":  # other roles share the var dir: the database tells
                self._write_health()
            if time.monotonic() >= self._next_beat:
                self._heartbeat()

    # -- the workers table -------------------------------------------------------------
    @property
    def listener_name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:listener"

    def _register(self) -> None:
        """Register this process's threads in the database (``amagi status`` lists them)."""
        assert self.database is not None
        host, pid = socket.gethostname(), os.getpid()
        with self.database.session(write=True) as s:
            gone = stop_dead(s, host, pid_alive)
            if self.listens:
                register(s, self.listener_name, host=host, pid=pid, role=self.role,
                         state="starting")
            for w in self.workers:
                register(s, w.ident_name, host=host, pid=pid, role=self.role,
                         device=w.analyzer.options.device, state="starting")
        if gone:
            log.info("%d registered thread(s) of processes gone from this host marked stopped",
                     gone)
        self._registered = ([self.listener_name] if self.listens else []) + \
            [w.ident_name for w in self.workers]
        self._next_beat = time.monotonic() + self.cfg.service.heartbeat_s

    def _beats(self) -> list[Beat]:
        beats = []
        every = self.cfg.service.heartbeat_s  # how stale reads (amagi status)
        if self.listens:
            listener = self.listener
            up = listener is not None and listener.is_running
            beats.append(Beat(self.listener_name, "listening" if up else "starting" if listener is None else "stopping", {
                "heartbeat_s": every,
                "port": listener.port if up else self.cfg.listener.port,  # type: ignore[union-attr]
                "refused_c_stores": listener.refused_counts() if listener is not None else {}}))
        for w in self.workers:
            h = w.health()
            beats.append(Beat(h.name, h.state if h.alive else "dead thread", {
                "heartbeat_s": every, "jobs_finished": h.jobs_finished, "restarts": h.restarts,
                "last_error": h.last_error}))
        return beats

    def _heartbeat(self) -> None:
        """Renew this process's rows; a database that cannot be reached is tried again."""
        self._next_beat = time.monotonic() + self.cfg.service.heartbeat_s
        if self.database is None:
            return
        try:
            with self.database.session(write=True) as s:
                beat(s, self._beats())
        except Exception as e:
            log.warning("heartbeat not recorded: %s: %s", type(e).__name__, e)

    def worker_health(self) -> list[dict]:
        """Each worker's health (see :class:`~amagi_plugin.service.worker.WorkerHealth`)."""
        import dataclasses

        return [dataclasses.asdict(w.health()) for w in self.workers]

    def _write_health(self) -> None:
        listener = self.listener
        doc = {"pid": os.getpid(), "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(),
               "workers": self.worker_health(),
               "refused_c_stores": listener.refused_counts() if listener is not None else {}}
        path = Path(self.cfg.var_dir) / HEALTH_FILE
        tmp = path.with_name(f".{HEALTH_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
        except OSError as e:  # a full disk must not stop the supervisor
            log.debug("cannot write %s: %s", path, e)
            tmp.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        self.stop_event.set()
        self._jobs_queued.set()
        self._results_ready.set()
        for t in [*self.workers, *([self.delivery] if self.delivery else []), *self._threads]:
            t.join(timeout=30)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.database is not None:
            if self._registered:
                try:
                    with self.database.session(write=True) as s:
                        mark_stopped(s, self._registered)
                except Exception as e:  # they go stale instead
                    log.warning("cannot record the stop in the workers table: %s", e)
            self.database.dispose()
        if self.role == "all":
            (Path(self.cfg.var_dir) / HEALTH_FILE).unlink(missing_ok=True)
        _INCOMING_TEMPDIR.release(self)

    def serve_forever(self) -> None:
        """Start, then run until SIGINT/SIGTERM."""
        stopping = threading.Event()

        def on_signal(signum, frame) -> None:
            log.info("signal %d: stopping", signum)
            stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not stopping.wait(1.0):
                pass
        finally:
            self.stop()

    @property
    def port(self) -> int:
        return self.listener.port if self.listener else self.cfg.listener.port

    # -- listener callbacks ------------------------------------------------------------
    def _make_listener(self):
        from dicom_io.net.listener import DicomListener

        lc = self.cfg.listener
        return DicomListener(
            ae_title=lc.ae_title, bind_address=lc.bind_address, port=lc.port,
            spool_dir=self.cfg.spool_dir, on_stored=self._on_stored,
            on_association_released=self._on_released, max_pdu=lc.max_pdu,
            acse_timeout=lc.acse_timeout, dimse_timeout=lc.dimse_timeout,
            network_timeout=lc.network_timeout, allowed_calling_aes=lc.allowed_calling_aes,
            reserve_bytes=self.cfg.storage.reserve_mb << 20, tls=self._server_tls(),
            on_received_phi=register_phi, max_associations=lc.max_associations,
            require_called_ae=lc.require_called_ae, incoming_dir=self.incoming_dir,
            on_commitment_report=(self._on_commitment_report
                                  if self.cfg.delivery.storage_commitment else None))

    def _on_commitment_report(self, report) -> None:
        """A Storage Commitment report on an association the destination opened: record it
        for the deliveries of its transaction sent to that AE (raises: not acknowledged)."""
        from db.deliveries import record_commitment_report

        assert self.database is not None
        failed = {uid: f"Failure Reason 0x{code:04X}" for uid, code in report.failed.items()}
        with self.database.session(write=True) as s:
            n = record_commitment_report(s, report.transaction_uid, set(report.committed),
                                         failed, from_ae=report.calling_ae)
        if n == 0:
            log.warning("storage commitment report %s from %s matches no delivery sent to "
                        "that AE; ignored", report.transaction_uid, report.calling_ae)
        else:
            log.info("storage commitment report %s from %s: %d committed, %d failed",
                     report.transaction_uid, report.calling_ae, len(report.committed),
                     len(report.failed))

    def _server_tls(self):
        lc = self.cfg.listener
        if not lc.tls:
            return None
        from dicom_io.net.tls import server_context

        return server_context(lc.tls_cert, lc.tls_key, ca_file=lc.tls_ca or None,
                              require_client_cert=lc.require_client_cert)

    def _on_stored(self, inst: StoredInstance) -> None:
        """Record the instance (the C-STORE succeeds only if this returns) and queue its job."""
        hdr = pydicom.dcmread(inst.path, stop_before_pixels=True, specific_tags=[
            "StudyDate", "StudyDescription", "SeriesDescription", "PatientID"])
        assert self.database is not None
        self.metrics.inc("amagi_received_bytes_total", inst.size_bytes)
        self.metrics.inc("amagi_received_instances_total")
        with self.database.session(write=True) as s:
            record_instance(
                s, sop_instance_uid=inst.sop_instance_uid, sop_class_uid=inst.sop_class_uid,
                transfer_syntax_uid=inst.transfer_syntax, study_instance_uid=inst.study_instance_uid,
                series_instance_uid=inst.series_instance_uid, size_bytes=inst.size_bytes,
                spool_path=str(inst.path), calling_ae=inst.calling_ae, received_at=inst.received_at,
                study_date=_study_date(hdr.get("StudyDate")),
                study_description=hdr.get("StudyDescription"), modality=inst.modality,
                series_description=hdr.get("SeriesDescription"),
                number_of_frames=inst.number_of_frames, patient_id=hdr.get("PatientID"),
                store_patient_id=self.cfg.database.store_patient_id)
            if inst.sop_class_uid not in INPUT_SOP_CLASSES:
                return  # a result object sent back to us: stored, not analysed
            if self._is_series_member(inst):
                self._track_series(s, inst)
                return
            job = enqueue(s, inst.sop_instance_uid, model_name=self.spec.name,
                          model_version=self.spec.version,
                          max_attempts=self.cfg.worker.max_attempts, ready=False)
        if job.created or job.requeued:
            with self._lock:
                self._pending[inst.sop_instance_uid] = job.job_id
            if job.requeued:
                log.info("instance %s received again; its job %d had failed and is queued "
                         "again when the association ends", inst.sop_instance_uid, job.job_id)
        else:
            log.info("instance %s already analysed with %s: no new job",
                     inst.sop_instance_uid, self.spec.label)

    @staticmethod
    def _is_series_member(inst: StoredInstance) -> bool:
        return inst.sop_class_uid == VL_ENDOSCOPIC and (inst.number_of_frames or 1) == 1

    def _track_series(self, session, inst: StoredInstance) -> None:
        """Single-frame images: one job per series, released when complete or quiet."""
        with self._lock:
            entry = self._series.get(inst.series_instance_uid)
        if entry is None:
            job = enqueue(session, inst.sop_instance_uid, model_name=self.spec.name,
                          model_version=self.spec.version,
                          max_attempts=self.cfg.worker.max_attempts, ready=False)
            entry = (job.job_id, time.monotonic(), inst.images_in_acquisition, 0)
        job_id, _, expected, n = entry
        entry = (job_id, time.monotonic(), expected or inst.images_in_acquisition, n + 1)
        with self._lock:
            self._series[inst.series_instance_uid] = entry
        if entry[2] and entry[3] >= entry[2]:
            release(session, job_id)
            with self._lock:
                self._series.pop(inst.series_instance_uid, None)
            self._jobs_queued.set()
            log.info("series %s complete (%d images): job %d queued", inst.series_instance_uid,
                     entry[3], job_id)

    def _on_released(self, summary: AssociationSummary) -> None:
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
        self._jobs_queued.set()
        log.info("association from %s %s: %d job(s) queued", summary.calling_ae,
                 "aborted" if summary.aborted else "released", len(jobs))

    def _watch_series(self) -> None:
        timeout = self.cfg.worker.series_timeout_s
        while not self.stop_event.wait(min(1.0, timeout / 4)):
            now = time.monotonic()
            with self._lock:
                quiet = [(uid, e[0]) for uid, e in self._series.items() if now - e[1] >= timeout]
                for uid, _ in quiet:
                    del self._series[uid]
            if quiet and self.database is not None:
                with self.database.session(write=True) as s:
                    for uid, job_id in quiet:
                        release(s, job_id)
                        log.info("series %s quiet for %.0f s: job %d queued", uid, timeout, job_id)
                self._jobs_queued.set()

    def _release_after_restart(self) -> None:
        """Jobs left ``received`` by a previous run: their associations are over.

        Only a process that listens does so (a worker that starts while a listener receives
        would queue the jobs of associations still open); every role takes at once the jobs
        of dead processes on this host.
        """
        assert self.database is not None
        with self.database.session(write=True) as s:
            stale = received_jobs(s) if self.listens else []
            for job_id, *_ in stale:
                release(s, job_id)
            retaken = expire_dead_leases(s, socket.gethostname(), pid_alive)
        if stale:
            log.info("%d job(s) received before a restart queued now", len(stale))
        if retaken:
            log.info("%d job(s) of a previous run on this host taken again without waiting "
                     "for their lease", retaken)

    # -- deliveries ----------------------------------------------------------------------
    def _send(self, paths: list[Path], dest: Destination):
        if dest.is_web:
            from dicom_io.net.stow import store_instances

            return store_instances(paths, dest.url, auth=self._web_auth(dest),
                                   ca_file=dest.tls_ca or None, cert_file=dest.tls_cert or None,
                                   key_file=dest.tls_key or None, timeout=dest.timeout_s)
        from dicom_io.net.scu import send_instances

        tls = self._client_tls(dest)
        return send_instances(paths, dest.ae_title, dest.host, dest.port,
                              calling_ae_title=self.cfg.delivery.calling_ae_title, tls=tls)

    @staticmethod
    def _client_tls(dest: Destination):
        """The TLS context for an outbound association to ``dest`` (None: plaintext)."""
        if not dest.tls:
            return None
        from dicom_io.net.tls import client_context

        return client_context(ca_file=dest.tls_ca or None, cert_file=dest.tls_cert or None,
                              key_file=dest.tls_key or None)

    def _commit(self, refs: list[tuple[str, str]], dest: Destination, transaction_uid: str
                ) -> list[tuple[bool, str]] | None:
        from dicom_io.net.commitment import request_storage_commitment

        tls = self._client_tls(dest)
        results = request_storage_commitment(
            refs, dest.ae_title, dest.host, dest.port,
            calling_ae_title=self.cfg.delivery.calling_ae_title, tls=tls,
            transaction_uid=transaction_uid,
            report_wait=self.cfg.delivery.commitment_report_wait_s)
        if results is None:  # the report comes on a new association: _on_commitment_report
            return None
        by_uid = {r.sop_instance_uid: r for r in results}
        out = []
        for _cls, uid in refs:
            r = by_uid.get(uid)
            if r is None or (not r.committed and r.failure_reason is None):
                out.append((False, "not in the commitment report"))
            else:
                out.append((r.committed, "" if r.committed else
                            f"Failure Reason 0x{r.failure_reason:04X}"))
        return out

    # -- metrics -----------------------------------------------------------------------
    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("amagi_received_bytes_total", "counter", "Bytes received by C-STORE")
        m.describe("amagi_received_instances_total", "counter", "Instances received by C-STORE")
        m.describe("amagi_jobs_total", "counter", "Jobs finished, by outcome")
        m.describe("amagi_jobs", "gauge", "Jobs in the queue, by state")
        m.describe("amagi_stage_seconds_total", "counter", "Seconds spent per pipeline stage")
        m.describe("amagi_deliveries_total", "counter", "Delivery attempts, by result")

    def _job_gauges(self):
        assert self.database is not None
        with self.database.session() as s:
            counts = job_counts(s)
        return {"amagi_jobs": {(("state", str(getattr(k, "value", k))),): float(v)
                               for k, v in counts.items()}}
