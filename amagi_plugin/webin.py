"""Videos read from a DICOMweb server (QIDO-RS + WADO-RS) instead of pushed by C-STORE.

* :func:`parse_study_url` reads ``amagi process``'s
  ``dicomweb+https://HOST/dicom-web/studies/STUDY_UID[/series/SERIES_UID]`` form;
* :func:`web_source` checks a server's URL, authentication and TLS options exactly as a
  ``[[delivery.destinations]]`` DICOMweb entry is checked, and reads its secret from the
  environment;
* :class:`Poller` (``amagi poll``) finds new video instances, retrieves them into the spool
  and records and queues each with the same functions the C-STORE listener uses
  (:func:`~dicom_io.net.handlers.header_fields`,
  :func:`~amagi_plugin.service.intake.record_stored`, :func:`db.queue.enqueue`): ``amagi serve`` workers
  sharing the database analyse and deliver them like pushed ones. What the database already
  holds (by SOP Instance UID) is never retrieved or queued again, so a restart — or a video
  that was also pushed — is not analysed twice. On a large archive it can list only the
  studies of the last days between two full listings (``recent_days``, ``full_every_s``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom

from amagi_plugin.config import Config, ConfigError, Destination
from amagi_plugin.errors import InputError
from amagi_plugin.modelspec import ModelSpec

log = logging.getLogger(__name__)

SCHEME = "dicomweb+"


def parse_study_url(text: str) -> tuple[str, str, str | None]:
    """``dicomweb+http(s)://HOST[:PORT]/ROOT/studies/STUDY[/series/SERIES]`` →
    ``(http(s)://HOST[:PORT]/ROOT, STUDY, SERIES or None)``.

    Raises
    ------
    InputError
        Not of that form (the message shows the expected form).
    """
    from urllib.parse import urlsplit

    from dicom_io.net.checks import check_uid

    form = f"{SCHEME}https://HOST/dicom-web/studies/STUDY_UID[/series/SERIES_UID]"
    if not text.lower().startswith(SCHEME):
        raise InputError(f"{text!r} is not a DICOMweb study URL ({form})")
    url = text[len(SCHEME):].rstrip("/")
    parts = urlsplit(url)
    segments = parts.path.split("/")
    try:
        i = len(segments) - 1 - segments[::-1].index("studies")
    except ValueError:
        raise InputError(f"{_shown(url)}: no /studies/STUDY_UID in the path ({form})") from None
    rest = segments[i + 1:]
    if len(rest) not in (1, 3) or (len(rest) == 3 and rest[1] != "series"):
        raise InputError(f"{_shown(url)}: the path must end in /studies/STUDY_UID or "
                         f"/studies/STUDY_UID/series/SERIES_UID ({form})")
    study, series = rest[0], rest[2] if len(rest) == 3 else None
    for name, uid in (("Study Instance UID", study), ("Series Instance UID", series)):
        if uid is not None:
            ok, why = check_uid(uid, name)
            if not ok:
                raise InputError(f"{_shown(url)}: {why}")
    base = parts._replace(path="/".join(segments[:i])).geturl()
    return base, study, series


def _shown(url: str) -> str:
    from amagi_plugin.config import _redact_url

    return _redact_url(url)


@dataclass(frozen=True)
class WebOptions:
    """How to reach a DICOMweb server we read from: the keys of a DICOMweb destination."""

    auth: str = "none"
    username: str = ""
    password_env: str = ""
    token_env: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    timeout_s: float = 60.0


def web_source(url: str, options: WebOptions, environ: Mapping[str, str]):
    """A :class:`~dicom_io.net.webin.WebSource` for ``url``, its options checked as those of
    a DICOMweb destination and its secret read from ``environ`` now.

    Raises
    ------
    ConfigError
        An invalid URL or option, or the secret's environment variable is not set.
    """
    keys = {k: v for k, v in dataclasses.asdict(options).items()
            if v != getattr(WebOptions, k)}
    try:
        peer = Destination.parse({"url": url, **keys})
    except ValueError as e:
        raise ConfigError(f"DICOMweb source: {e}") from None
    return peer_source(peer, environ)


def peer_source(peer: Destination, environ: Mapping[str, str], what: str = "DICOMweb source"):
    """The :class:`~dicom_io.net.webin.WebSource` of a checked DICOMweb peer (``poll.sources``,
    :func:`web_source`, or a destination queried by ``amagi doctor``), its secret read from
    ``environ`` now; ``what`` names the peer in errors.

    Raises
    ------
    ConfigError
        The secret's environment variable is not set.
    """
    from dicom_io.net.webin import WebSource

    return WebSource(peer.url, auth=web_auth(peer, environ, what),
                     ca_file=peer.tls_ca or None, cert_file=peer.tls_cert or None,
                     key_file=peer.tls_key or None, timeout=peer.timeout_s)


def web_auth(peer: Destination, environ: Mapping[str, str], what: str):
    """The credentials of a DICOMweb peer, its secret read from ``environ``; ``None`` when
    it needs none.

    Raises
    ------
    ConfigError
        The environment variable that holds the password or token is not set, or holds a
        character the request cannot carry: beyond Latin-1, or in a token a control
        character (RFC 9110 §5.5), such as the trailing newline of a secret file read as
        it is. The error never shows the secret.
    """
    from dicom_io.net.web import WebAuth

    name = peer.secret_env()
    if name is None:
        return None
    secret = environ.get(name, "")
    kind = "password" if peer.auth == "basic" else "token"
    if not secret:
        raise ConfigError(f"{what} {peer.key}: environment variable {name} (its {kind}) is "
                          "not set")
    # A token goes into the header as it is; a password base64-encoded from Latin-1.
    bad = [c for c in secret if ord(c) > 255 or (peer.auth != "basic" and (
        (ord(c) < 32 and c != "\t") or ord(c) == 127))]
    if bad:
        how = ("ends with a control character (a newline?)"
               if len(bad) == 1 and secret[-1] == bad[0] and ord(bad[0]) < 32
               else f"holds {len(bad)} characters (control or beyond Latin-1)")
        raise ConfigError(f"{what} {peer.key}: environment variable {name} (its {kind}) "
                          f"{how}, which an HTTP request cannot carry")
    if peer.auth == "basic":
        return WebAuth(username=peer.username, password=secret)
    return WebAuth(token=secret)


def fetch_videos(source, study_uid: str, series_uid: str | None, directory: Path
                 ) -> list[Path]:
    """Find the video instances of a study (or series) and retrieve each into ``directory``
    as ``<SOPInstanceUID>.dcm``.

    Raises
    ------
    InputError
        The study holds no video instance.
    NetworkError, WebRefusedError
        From QIDO-RS or WADO-RS (see :mod:`dicom_io.net.webin`).
    """
    from dicom_io.net.webin import find_video_instances, retrieve_instance

    found = find_video_instances(source, study_instance_uid=study_uid,
                                 series_instance_uid=series_uid)
    if not found:
        where = f"series {series_uid} of study {study_uid}" if series_uid else f"study {study_uid}"
        raise InputError(f"{source.base_url}: no video instance (Video Endoscopic, Microscopic "
                         f"or Photographic) in {where}")
    return [retrieve_instance(source, inst, directory / f"{inst.sop_instance_uid}.dcm")
            for inst in found]


@dataclass
class PollResult:
    """One poll: instances listed, already known, queued now, and failed to retrieve.

    ``since`` is the first Study Date the poll listed (``None``: every date), ``full`` whether
    it was a full listing (within the poller's study and start date) or only recent studies.
    """

    found: int = 0
    known: int = 0
    queued: int = 0
    failed: int = 0
    since: str | None = None
    full: bool = True

    def __str__(self) -> str:
        scope = "" if self.full else f" (recent studies, since {self.since})"
        return (f"{self.found} video instance(s) listed{scope}, {self.known} already known, "
                f"{self.queued} retrieved and queued, {self.failed} failed (retried next poll)")


class Poller:
    """Polls a DICOMweb server for video instances and queues the new ones.

    Parameters
    ----------
    cfg : Config
        Storage (spool), database and ``worker.max_attempts``.
    spec : ModelSpec
        The model the jobs are queued for (as ``amagi serve`` would).
    source : WebSource
        The server.
    database : db.Database
        The case store ``amagi serve`` uses.
    study_uid : str, optional
        Only that study.
    study_date_from : str, optional
        ``YYYYMMDD``: only studies of that date or later.
    recent_days : int, optional
        Between two full listings, list only the studies of the last ``recent_days`` days
        (Study Date ≥ today − ``recent_days``, the poller's local date): a query whose
        answer stays small on an archive that grows. ``None``: every poll is a full listing.
    full_every_s : float
        With ``recent_days``, how often a full listing is made (the first poll is one): a
        video added late to an older study is found by the next one.
    today, clock : callable
        The local date and a monotonic clock (injected by tests).

    Instances that failed to be retrieved are tried again by the next poll, whatever its
    scope.
    """

    def __init__(self, cfg: Config, spec: ModelSpec, source, database,
                 study_uid: str | None = None, study_date_from: str | None = None,
                 recent_days: int | None = None, full_every_s: float = 86400.0,
                 today=dt.date.today, clock=time.monotonic) -> None:
        if recent_days is not None and recent_days < 1:
            raise ConfigError(f"recent days must be at least 1 (a study of yesterday evening "
                              f"is not missed), got {recent_days}")
        if full_every_s <= 0:
            raise ConfigError(f"the full listing's period must be more than 0 s, got "
                              f"{full_every_s:g}")
        self.cfg = cfg
        self.spec = spec
        self.source = source
        self.database = database
        self.study_uid = study_uid
        self.study_date_from = study_date_from
        self.recent_days = recent_days
        self.full_every_s = full_every_s
        self._today = today
        self._clock = clock
        self._last_full: float | None = None  # clock time of the last full listing
        self._retry: dict[str, object] = {}  # SOP Instance UID -> instance that failed
        self._stop: threading.Event | None = None  # run()'s: a poll ends early when set
        self.spool = Path(cfg.spool_dir)
        # Not the listener's .incoming, which ``amagi serve`` empties when it starts.
        self.incoming = self.spool / ".webin"

    def _known(self, uids: list[str]) -> set[str]:
        import sqlalchemy as sa

        from db.schema import Instance

        known: set[str] = set()
        with self.database.session() as s:
            for start in range(0, len(uids), 500):
                batch = uids[start:start + 500]
                known.update(s.scalars(sa.select(Instance.sop_instance_uid)
                                       .where(Instance.sop_instance_uid.in_(batch))))
        return known

    def _recent_from(self) -> str:
        """The first Study Date of a recent-studies poll (never before ``study_date_from``)."""
        since = (self._today() - dt.timedelta(days=self.recent_days)).strftime("%Y%m%d")
        return max(since, self.study_date_from) if self.study_date_from else since

    def poll_once(self) -> PollResult:
        """One round: QIDO-RS, then WADO-RS, record and queue each instance not yet known.

        It lists every study (within ``study_uid``/``study_date_from``) when a full listing
        is due (the first poll, then every ``full_every_s``), else only the recent ones.

        Raises
        ------
        NetworkError, WebRefusedError
            The QIDO-RS query failed (nothing retrieved). A failed retrieval of one instance
            is logged and counted instead, and tried again by the next poll.
        """
        from dicom_io.errors import DicomIOError
        from dicom_io.net.webin import find_video_instances

        now = self._clock()
        full = (self.recent_days is None or self._last_full is None
                or now - self._last_full >= self.full_every_s)
        since = self.study_date_from if full else self._recent_from()
        found = find_video_instances(self.source, study_instance_uid=self.study_uid,
                                     study_date_from=since)
        if full:
            self._last_full = now
        else:  # the last poll's failures, whatever their study's date
            listed = {i.sop_instance_uid for i in found}
            found += [i for uid, i in self._retry.items() if uid not in listed]
        known = self._known([i.sop_instance_uid for i in found])
        result = PollResult(found=len(found), known=len(known), since=since, full=full)
        self._retry = {}
        for inst in found:
            if inst.sop_instance_uid in known:
                continue
            if self._stop is not None and self._stop.is_set():
                break  # stopping: the rest is found again by the next poll
            try:
                job_id = self._take(inst)
            except (DicomIOError, OSError) as e:
                result.failed += 1
                self._retry[inst.sop_instance_uid] = inst
                log.warning("instance %s not retrieved: %s", inst.sop_instance_uid, e)
                continue
            result.queued += 1
            log.info("instance %s of study %s retrieved from %s: job %d queued",
                     inst.sop_instance_uid, inst.study_instance_uid, self.source.base_url,
                     job_id)
        return result

    def _take(self, inst) -> int:
        """Retrieve one instance into the spool, record it and queue its job (or nothing)."""
        from amagi_plugin.service.intake import record_stored
        from db.queue import enqueue
        from dicom_io.net.handlers import header_fields
        from dicom_io.net.records import StoredInstance
        from dicom_io.net.spool import place
        from dicom_io.net.webin import retrieve_instance

        self.incoming.mkdir(parents=True, exist_ok=True)
        tmp = retrieve_instance(self.source, inst, self.incoming / f"{uuid.uuid4().hex}.dcm")
        try:
            placed = place(tmp, self.spool, (inst.study_instance_uid, inst.series_instance_uid),
                           f"{inst.sop_instance_uid}.dcm")
        finally:
            tmp.unlink(missing_ok=True)  # left only when place() had to copy or failed
        try:
            header = pydicom.dcmread(placed.path, stop_before_pixels=True)
            stored = StoredInstance(
                path=placed.path, sop_class_uid=inst.sop_class_uid,
                sop_instance_uid=inst.sop_instance_uid,
                study_instance_uid=inst.study_instance_uid,
                series_instance_uid=inst.series_instance_uid,
                transfer_syntax=str(header.file_meta.TransferSyntaxUID),
                size_bytes=placed.path.stat().st_size, calling_ae="", called_ae="",
                peer_address=self.source.base_url, association_id="",
                received_at=dt.datetime.now(dt.timezone.utc), **header_fields(header))
            with self.database.session(write=True) as s:
                record_stored(s, stored, self.cfg.database.store_patient_id)
                job = enqueue(s, inst.sop_instance_uid, model_name=self.spec.name,
                              model_version=self.spec.version,
                              max_attempts=self.cfg.worker.max_attempts, ready=True)
        except BaseException:
            placed.rollback()  # not recorded: leave no unrecorded file in the spool
            raise
        placed.commit()
        return job.job_id

    def clean_incoming(self) -> None:
        """Remove what an interrupted poll left in its download directory (one poller per
        spool: another one's download in progress would fail and be retried)."""
        if not self.incoming.is_dir():
            return
        for p in self.incoming.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted poll", p.name)

    def run(self, interval_s: float, once: bool = False,
            stop: threading.Event | None = None, report=None,
            clean: bool = True) -> PollResult:
        """Poll every ``interval_s`` seconds until ``stop`` is set (or once).

        A failed poll (server unreachable, 5xx) is logged and tried again at the next
        interval; with ``once`` it is raised. ``report(result)`` is called after each poll.
        ``clean``: first remove what an interrupted poll left (``False`` when several
        pollers share the spool and it was done once before they started). Returns the
        totals.
        """
        from dicom_io.errors import NetworkError

        stop = self._stop = stop or threading.Event()
        total = PollResult()
        if clean:
            self.clean_incoming()
        while True:
            started = time.monotonic()
            try:
                result = self.poll_once()
            except NetworkError as e:
                if once:
                    raise
                log.warning("poll of %s failed, trying again in %g s: %s",
                            self.source.base_url, interval_s, e)
            else:
                for name in ("found", "known", "queued", "failed"):
                    setattr(total, name, getattr(total, name) + getattr(result, name))
                log.info("poll of %s: %s", self.source.base_url, result)
                if report is not None:
                    report(result)
            if once or stop.wait(max(0.0, interval_s - (time.monotonic() - started))):
                return total
