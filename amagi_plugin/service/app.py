"""Start and stop of ``amagi serve``: listener, queue, workers, deliveries and metrics.

This module owns the service's lifecycle (start-up checks, threads, the workers table, the
health file); what it wires lives beside it: :mod:`~amagi_plugin.service.intake` (C-STORE
recording, series completion), :mod:`~amagi_plugin.service.worker`,
:mod:`~amagi_plugin.service.delivery` with :mod:`~amagi_plugin.service.outbound` (the
destinations) and :mod:`~amagi_plugin.service.metrics`.

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

from amagi_plugin.config import Config
from amagi_plugin.errors import AmagiError, ConfigError
from amagi_plugin.logsetup import PHI_FILTER, PhiScope
from amagi_plugin.modelspec import ModelSpec
from amagi_plugin.pipeline import BleedingAnalyzer
from amagi_plugin.service import HEALTH_FILE, pid_alive
from amagi_plugin.service.delivery import DeliveryLoop
from amagi_plugin.service.intake import Intake
from amagi_plugin.service.metrics import MetricsServer, job_gauges, service_metrics
from amagi_plugin.service.outbound import Outbound, record_commitment_report
from amagi_plugin.service.worker import Worker
from db import Database, open_database
from db.engine import sqlite_file
from db.queue import expire_dead_leases, received_jobs, release
from db.workers import Beat, beat, mark_stopped, register, stop_dead
from dicom_io.process_setting import ProcessSetting

log = logging.getLogger(__name__)

#: Seconds between two supervisor rounds (dead worker check, health file).
SUPERVISE_S = 1.0


#: Where :mod:`tempfile` creates files, process-wide. pynetdicom streams each C-STORE to a
#: temporary file in the default temporary directory before our handler runs, and offers no
#: other way to choose it: a running service that listens holds it on its spool's
#: ``.incoming`` (placing a file is then a rename, not a copy). With several services in one
#: process (tests, benchmarks) it follows the newest one still running.
INCOMING_TEMPDIR = ProcessSetting("tempfile.tempdir", lambda: tempfile.tempdir,
                                  lambda value: setattr(tempfile, "tempdir", value))


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
        # The destinations, with DICOMweb passwords and tokens read from ``environ``.
        self.outbound = Outbound(cfg, environ)
        self.analyzers = list(analyzer) if isinstance(analyzer, Sequence) else [analyzer]
        self.role = cfg.service.role
        self.listens = self.role in ("all", "listener")
        self.analyses = self.role in ("all", "worker")
        if self.analyses and not self.analyzers:
            raise ValueError(f"role {self.role} analyses: it needs an analyzer")
        self.analyzer = self.analyzers[0] if self.analyzers else None
        self.spec = spec
        self.stop_event = threading.Event()
        self.metrics = service_metrics()
        self._jobs_queued = threading.Event()
        self.intake = Intake(cfg, spec, self.metrics, self._jobs_queued)
        self.database: Database | None = None
        self.listener = None
        self.workers: list[Worker] = []
        self.delivery: DeliveryLoop | None = None
        self.metrics_server: MetricsServer | None = None
        self._threads: list[threading.Thread] = []
        self._results_ready = threading.Event()
        self._registered: list[str] = []  # names of this process's rows in the workers table
        self._next_beat = 0.0
        # The patient names and IDs this service received, masked in logs while it runs.
        self.phi: PhiScope | None = None
        self._poll_sources: list = []  # the DICOMweb servers polled (poll.sources)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        check_role_database(cfg)
        try:
            for d in (cfg.var_dir, cfg.spool_dir, cfg.results_dir):
                Path(d).mkdir(parents=True, exist_ok=True)
            self._check_free_space()
            self.outbound.check_secrets()
            self._poll_sources = self._polled_sources()
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
            INCOMING_TEMPDIR.claim(self, str(incoming))
        try:
            self.database = open_database(cfg.database_url)
            self.intake.database = self.database
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
                    self.database, destinations, self.outbound.send,
                    cfg.delivery.retry_initial_s, cfg.delivery.retry_max_s, self.stop_event,
                    self.metrics, wakeup=self._results_ready,
                    commit=self.outbound.commit if cfg.delivery.storage_commitment else None)
                self.delivery.start()
            if self.listens:
                watcher = threading.Thread(target=self.intake.watch_series,
                                           args=(self.stop_event,), name="amagi-series",
                                           daemon=True)
                watcher.start()
                self._threads.append(watcher)
            if cfg.metrics.enabled:
                self.metrics_server = MetricsServer(self.metrics, cfg.metrics.bind_address,
                                                    cfg.metrics.port)
                self.metrics_server.start()
                self.metrics.add_collector(job_gauges(self.database))
            if self.listens:
                self.phi = PHI_FILTER.open_scope()
                self.listener = self._make_listener()
                self.listener.start()
                self._start_pollers()
        except BaseException:  # a half-started service stops what it started
            self.stop()
            raise
        where = (f"{cfg.listener.ae_title} on {cfg.listener.bind_address}:{self.listener.port}"
                 if self.listener is not None else "no listener")
        log.info("amagi serve (role %s): %s, model %s, %d worker(s), destinations: %s%s",
                 self.role, where, self.spec.label, len(self.workers),
                 (", ".join(str(d) for d in cfg.delivery.destinations)
                  or "none (results kept on disk)") if self.analyses else "none (not delivering)",
                 "".join(f"; polling {s.base_url} every {cfg.poll.interval_s:g} s"
                         for s in self._poll_sources))

    # -- DICOMweb sources (poll.sources) -----------------------------------------------
    def _polled_sources(self) -> list:
        """The sources this process polls (role all or listener), their secrets read now.

        Raises
        ------
        ConfigError
            A source's secret is not in the environment.
        """
        from amagi_plugin.webin import peer_source

        if not self.listens:
            return []
        return [peer_source(peer, self.outbound.environ) for peer in self.cfg.poll.sources]

    def _start_pollers(self) -> None:
        """One thread per source, each an :class:`~amagi_plugin.webin.Poller` queueing what
        the case store does not hold yet, as ``amagi poll`` does."""
        from amagi_plugin.webin import Poller

        poll = self.cfg.poll
        pollers = [Poller(self.cfg, self.spec, source, self.database,
                          study_date_from=poll.since or None,
                          recent_days=poll.recent_days or None,
                          full_every_s=poll.full_every_h * 3600.0)
                   for source in self._poll_sources]
        if pollers:  # they share the download directory: cleaned once, before any starts
            pollers[0].clean_incoming()
        for i, poller in enumerate(pollers):
            t = threading.Thread(target=self._poll, args=(poller,), name=f"amagi-poll-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _poll(self, poller) -> None:
        """Run one poller until the service stops. An unreachable server is retried by the
        poller itself; a refused query (HTTP 4xx, e.g. a revoked token) or a database error
        is logged and the polling resumes after an interval: the thread never dies of it."""
        interval = self.cfg.poll.interval_s

        def polled(result) -> None:
            if result.queued:
                self._jobs_queued.set()

        while not self.stop_event.is_set():
            try:
                poller.run(interval, stop=self.stop_event, report=polled, clean=False)
            except Exception as e:
                log.error("polling %s failed, trying again in %g s: %s",
                          poller.source.base_url, interval, e)
                self.stop_event.wait(interval)

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
        if self.phi is not None:  # nothing logs what this service received any more
            self.phi.close()
        if self.role == "all":
            (Path(self.cfg.var_dir) / HEALTH_FILE).unlink(missing_ok=True)
        INCOMING_TEMPDIR.release(self)

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

    # -- the listener ------------------------------------------------------------------
    def _make_listener(self):
        from dicom_io.net.listener import DicomListener

        lc = self.cfg.listener
        return DicomListener(
            ae_title=lc.ae_title, bind_address=lc.bind_address, port=lc.port,
            spool_dir=self.cfg.spool_dir, on_stored=self.intake.on_stored,
            on_association_released=self.intake.on_released, max_pdu=lc.max_pdu,
            acse_timeout=lc.acse_timeout, dimse_timeout=lc.dimse_timeout,
            network_timeout=lc.network_timeout, allowed_calling_aes=lc.allowed_calling_aes,
            reserve_bytes=self.cfg.storage.reserve_mb << 20, tls=self._server_tls(),
            on_received_phi=self.phi.register if self.phi is not None else None,
            max_associations=lc.max_associations,
            require_called_ae=lc.require_called_ae, incoming_dir=self.incoming_dir,
            on_commitment_report=(self._on_commitment_report
                                  if self.cfg.delivery.storage_commitment else None))

    def _on_commitment_report(self, report) -> None:
        assert self.database is not None
        record_commitment_report(self.database, report)

    def _server_tls(self):
        lc = self.cfg.listener
        if not lc.tls:
            return None
        from dicom_io.net.tls import server_context

        return server_context(lc.tls_cert, lc.tls_key, ca_file=lc.tls_ca or None,
                              require_client_cert=lc.require_client_cert)

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
