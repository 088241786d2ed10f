"""Configuration: one typed object, loaded once and passed down.

Precedence, lowest to highest: built-in defaults < TOML file < environment < command-line flags.

- File: ``--config PATH`` or ``AMAGI_CONFIG``; no file is needed, the defaults work.
- Environment: ``AMAGI_<SECTION>_<KEY>``, e.g. ``AMAGI_LISTENER_PORT=11113``.
- Flags: ``--<section>-<key> VALUE`` on every command (``--listener-port 11113``), the generic
  ``--set section.key=VALUE``, and per-command short forms such as ``amagi serve --port``.

Every value remembers where it came from (``amagi config show``). An invalid value raises
:class:`~amagi_plugin.errors.ConfigError` whose one-line message names the key and its source.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from amagi_plugin.analysis import MASK_SCALES, SMOOTHING_METHODS
from amagi_plugin.errors import ConfigError

ENV_PREFIX = "AMAGI_"
#: What can run an analysis's networks (``model.backend``; :mod:`amagi_plugin.backends`).
BACKENDS = ("torch", "openvino")
CONFIG_ENV = "AMAGI_CONFIG"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 §6.2: AE VR, no backslash


def _check_ae_title(value: str) -> str:
    if not value.strip() or not _AE_TITLE.match(value):
        raise ValueError("an AE title is 1-16 printable ASCII characters, no backslash")
    return value


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("a TCP port is between 1 and 65535")
    return value


def _check_positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _check_probability(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError("must lie between 0 and 1 (both excluded)")
    return value


def _check_non_negative(value: float) -> float:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _check_device(value: str) -> str:
    if not re.match(r"^(cpu|cuda(:\d+)?)$", value):
        raise ValueError(f"{value!r} is not a device: use cpu, cuda or cuda:N")
    return value


def _choice(*choices: str):
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return check


def _opt(default: Any, help: str, check=None, metavar: str | None = None) -> Any:
    """A config field: default, one-line help (shown by ``amagi config template``), check."""
    kw: dict[str, Any] = {"metadata": {"help": help, "check": check, "metavar": metavar}}
    if isinstance(default, list):
        kw["default_factory"] = lambda: list(default)
    else:
        kw["default"] = default
    return field(**kw)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The file paths of a destination (anchored like every path of the configuration).
_DEST_PATHS = ("tls_ca", "tls_cert", "tls_key")
_DIMSE_KEYS = frozenset({"ae_title", "host", "port", "tls", "tls_ca", "tls_cert", "tls_key"})
_WEB_KEYS = frozenset({"url", "auth", "username", "password_env", "token_env", "tls_ca",
                       "tls_cert", "tls_key", "timeout_s"})


def _redact_url(text: str) -> str:
    """``scheme://user:password@host`` → ``scheme://***@host``: never echo credentials."""
    return re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)


def _check_web_url(value: str) -> str:
    """A DICOMweb service root: ``http(s)://host[:port]/path``, no credentials, no query."""
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    shown = repr(_redact_url(value.strip()))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown} is not an http(s):// URL")
    if parts.username or parts.password:
        raise ValueError(f"{shown}: credentials do not belong in the URL; use "
                         "auth = \"basic\" with username and password_env")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown}: a DICOMweb base URL has no query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ValueError(f"{shown}: {e}") from None
    return value.strip().rstrip("/")


@dataclass(frozen=True)
class Destination:
    """A peer that receives our results.

    DIMSE: ``AE_TITLE@HOST:PORT`` (C-STORE; TLS options from the file). DICOMweb: an
    ``http(s)://.../dicom-web`` base URL (STOW-RS), with optional HTTP basic or bearer
    authentication whose secret is read from the environment variable named here
    (``password_env``, ``token_env``), never from the configuration itself.
    """

    ae_title: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    url: str = ""
    auth: str = "none"
    username: str = ""
    password_env: str = ""
    token_env: str = ""
    timeout_s: float = 60.0

    @classmethod
    def parse(cls, value: str | Mapping[str, Any]) -> Destination:
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"unknown destination keys: {', '.join(sorted(unknown))}")
            if "url" in value:
                return cls._parse_web(value)
            needed = {"ae_title", "host", "port"} - set(value)
            if needed:
                raise ValueError("a destination needs ae_title, host and port (DIMSE) or url "
                                 f"(DICOMweb); missing {', '.join(sorted(needed))}")
            misplaced = set(value) - _DIMSE_KEYS
            if misplaced:
                raise ValueError(f"{', '.join(sorted(misplaced))}: only for a DICOMweb "
                                 "destination (url = ...)")
            dest = cls(**_with_paths(value))
            port = dest.port
            if isinstance(port, bool) or not str(port).strip().isdigit():
                raise ValueError(f"port {port!r} is not a number")
        elif value.strip().lower().startswith(("http://", "https://")):
            return cls._parse_web({"url": value})
        else:
            m = re.match(r"^(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$", value.strip())
            if not m:
                raise ValueError(f"{value!r} is not AE_TITLE@HOST:PORT or an http(s):// "
                                 "DICOMweb URL")
            port = int(m["port"])
            dest = cls(m["ae"], m["host"].strip("[]"), port)
        _check_ae_title(dest.ae_title)
        _check_port(int(port))
        return dataclasses.replace(dest, port=int(port))

    @classmethod
    def _parse_web(cls, value: Mapping[str, Any]) -> Destination:
        misplaced = set(value) - _WEB_KEYS
        if misplaced:
            raise ValueError(f"{', '.join(sorted(misplaced))}: only for a DIMSE destination "
                             "(AE_TITLE@HOST:PORT); a DICOMweb URL says https:// for TLS")
        for k, v in value.items():
            if k != "timeout_s" and not isinstance(v, str):
                raise ValueError(f"destination key {k} must be a string")
        dest = cls(**_with_paths(value))
        url = _check_web_url(dest.url)
        if url.lower().startswith("http://") and (dest.tls_ca or dest.tls_cert or dest.tls_key):
            raise ValueError(f"{url}: tls_ca, tls_cert and tls_key need an https:// URL")
        if dest.tls_key and not dest.tls_cert:
            raise ValueError(f"{url}: tls_key needs tls_cert")
        if dest.auth not in ("none", "basic", "bearer"):
            raise ValueError(f"{url}: auth must be none, basic or bearer, got {dest.auth!r}")
        if dest.auth == "basic" and not (dest.username and dest.password_env):
            raise ValueError(f"{url}: auth = \"basic\" needs username and password_env "
                             "(the name of the environment variable holding the password)")
        if dest.auth == "bearer" and not dest.token_env:
            raise ValueError(f"{url}: auth = \"bearer\" needs token_env (the name of the "
                             "environment variable holding the token)")
        unused = [k for k, kind in (("username", "basic"), ("password_env", "basic"),
                                    ("token_env", "bearer")) if getattr(dest, k) and dest.auth != kind]
        if unused:
            raise ValueError(f"{url}: {', '.join(unused)} given but auth is {dest.auth!r}")
        for k in ("password_env", "token_env"):
            name = getattr(dest, k)
            if name and not _ENV_NAME.match(name):
                raise ValueError(f"{url}: {k} names an environment variable (e.g. "
                                 f"AMAGI_PACS_PASSWORD), not the secret itself")
        try:
            timeout = float(dest.timeout_s)
        except (TypeError, ValueError):
            raise ValueError(f"{url}: timeout_s must be a number") from None
        _check_positive(timeout)
        return dataclasses.replace(dest, url=url, timeout_s=timeout)

    @property
    def is_web(self) -> bool:
        """``True`` for a DICOMweb (STOW-RS) destination."""
        return bool(self.url)

    @property
    def key(self) -> str:
        """How the case store names this destination: ``AE@HOST:PORT`` or the base URL."""
        if self.is_web:
            return self.url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    def secret_env(self) -> str | None:
        """The environment variable holding this destination's password or token."""
        return {"basic": self.password_env, "bearer": self.token_env}.get(self.auth) or None

    def __str__(self) -> str:
        if self.is_web:
            extra = [] if self.auth == "none" else [f"{self.auth} auth"]
            if self.tls_ca:
                extra.append(f"CA {self.tls_ca}")
            return f"{self.key} (STOW-RS{', ' + ', '.join(extra) if extra else ''})"
        return self.key + (" (TLS)" if self.tls else "")


@dataclass(frozen=True)
class StorageConfig:
    var_dir: Path = _opt(Path("var"), "Working directory for the database, spool and results")
    spool_dir: Path | None = _opt(None, "Where received instances are kept (default: VAR_DIR/spool)")
    results_dir: Path | None = _opt(None, "Where results are written (default: VAR_DIR/results)")
    reserve_mb: int = _opt(1024, "Free space (MiB) kept in reserve: below it C-STORE gets A700",
                           _check_non_negative)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = _opt("", "SQLAlchemy URL (default: sqlite:///VAR_DIR/amagi.db); "
                    "postgresql+psycopg://... for PostgreSQL")
    store_patient_id: bool = _opt(False, "Keep the Patient ID in the case store (names never are)")


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str = _opt("AMAGI", "Our AE title", _check_ae_title)
    port: int = _opt(11112, "TCP port of the DICOM listener", _check_port)
    bind_address: str = _opt("0.0.0.0", "Address the listener binds to")
    max_pdu: int = _opt(262144, "Maximum PDU size we accept (bytes, 0 = unlimited)",
                        _check_non_negative)
    acse_timeout: float = _opt(30.0, "ACSE timeout (s)", _check_positive)
    dimse_timeout: float = _opt(60.0, "DIMSE timeout (s)", _check_positive)
    network_timeout: float = _opt(60.0, "Network timeout (s)", _check_positive)
    allowed_calling_aes: list[str] = _opt([], "Calling AE titles allowed to connect (empty: any)")
    require_called_ae: bool = _opt(True, "Reject associations whose called AE title is not ours")
    max_associations: int = _opt(32, "Concurrent associations accepted; more are rejected",
                                 _check_positive)
    tls: bool = _opt(False, "Require DICOM TLS on the listener")
    tls_cert: Path | None = _opt(None, "Listener certificate (PEM)")
    tls_key: Path | None = _opt(None, "Listener private key (PEM)")
    tls_ca: Path | None = _opt(None, "CA bundle used to verify client certificates (PEM)")
    require_client_cert: bool = _opt(False, "With TLS: require a client certificate")


@dataclass(frozen=True)
class WorkerConfig:
    count: int = _opt(1, "Worker threads running the analysis pipeline", _check_positive)
    lease_s: float = _opt(60.0, "Job lease (s), renewed while the job runs: a job whose worker died "
                          "is taken again after it",
                          _check_positive)
    max_attempts: int = _opt(3, "Attempts per job before it is marked failed", _check_positive)
    series_timeout_s: float = _opt(60.0, "Inactivity (s) after which a multi-frame series is complete",
                                   _check_positive)
    devices: list[str] = _opt([], "Devices the service analyses on (cpu, cuda:N ...): worker.count "
                              "workers per device, each with its model; empty: model.device",
                              _check_device, metavar="DEVICE,...")


@dataclass(frozen=True)
class ServiceConfig:
    role: str = _opt("all", "What this amagi serve does: all (one process), listener (receive, "
                     "record, queue) or worker (analyse, deliver); listener and worker processes "
                     "share a PostgreSQL database and the storage directory",
                     _choice("all", "listener", "worker"))
    heartbeat_s: float = _opt(5.0, "Seconds between two heartbeats of a serve process in the "
                              "database; silent for 3 heartbeats: shown as stale",
                              _check_positive)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt("demo", "Model: 'demo' (bundled, synthetic-data demo) or a named architecture")
    checkpoint: Path | None = _opt(None, "Checkpoint file (.pth) for the model; empty: the "
                                   "bundled demo weights")
    folder: Path | None = _opt(None, "A model folder to run instead of the bundled demo: its "
                            "model.json names the checkpoint, operating point and probe (a "
                            "'make demo-model DEST=...' build, or one written as the bundled "
                            "one is); empty: the bundled demo")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    prediction_hz: float = _opt(10.0, "Predictions per second of video (the authors: 10)",
                                _check_positive)
    batch_size: int = _opt(8, "Clips per inference batch", _check_positive)
    bf16: bool = _opt(False, "bfloat16 autocast for inference")
    fast: bool = _opt(False, "Speed switch: bf16 where native, channels-last, preprocessing on "
                      "the device, TF32 and a device-sized batch on CUDA; off: exact fp32")
    decode_workers: int = _opt(1, "Decoding threads, each a stretch of the video from one key "
                               "frame to the next (frames and times identical to 1, serial)",
                               _check_positive)
    backend: str = _opt("torch", "What runs the clip network: torch, or openvino (the CPU only; "
                        "fp32, logits within the reference tolerance, or bf16 under "
                        "model.fast where the CPU computes it natively; needs "
                        "amagi-plugin[openvino]; compiled once per analyzer)",
                        _choice(*BACKENDS))


@dataclass(frozen=True)
class AnalysisConfig:
    # Unset, each of these three is the model's operating point when its model.json has one.
    smoothing: str = _opt("morphology", "Post-processing: morphology (opening then closing), median "
                          "or none; unset: the model's operating point if it has one",
                          _choice(*SMOOTHING_METHODS))
    smoothing_s: float = _opt(1.0, "Length of each smoothing filter (s); unset: the model's "
                              "operating point if it has one", _check_non_negative)
    threshold: float = _opt(0.5, "Probability above which a prediction is bleeding; unset: the "
                            "model's operating point if it has one", _check_probability)
    hold_threshold: float | None = _opt(None, "Hysteresis: an event that began above the "
                                        "threshold lasts while the probability stays above "
                                        "this (at most the threshold); unset: the model's "
                                        "operating point if it has one, else none",
                                        _check_probability)
    mask_scale: str = _opt("model", "Scale of the key-frame bleeding masks (SEG): model (the "
                           "frame resized as the segmentation net sees a clip's frames, the "
                           "whole frame, the map brought back to the frame's pixels) or native "
                           "(the frame's own pixels, in windows of the net's input size)",
                           _choice(*MASK_SCALES))


@dataclass(frozen=True)
class DeliveryConfig:
    destinations: list[Destination] = _opt([], "Where results are sent: AE_TITLE@HOST:PORT (C-STORE) "
                                           "or an http(s)://.../dicom-web URL (STOW-RS) ...")
    calling_ae_title: str = _opt("AMAGI", "Calling AE title for outbound associations",
                                 _check_ae_title)
    retry_initial_s: float = _opt(30.0, "First retry delay (s); doubles each time", _check_positive)
    retry_max_s: float = _opt(3600.0, "Longest retry delay (s)", _check_positive)
    storage_commitment: bool = _opt(False, "Request Storage Commitment after sending (DIMSE "
                                    "destinations); reports are also accepted on new "
                                    "associations to the listener")
    commitment_report_wait_s: float = _opt(10.0, "Seconds to wait for a Storage Commitment "
                                           "report on the requesting association; after that "
                                           "it is expected on a new association",
                                           _check_positive)


def _check_poll_source(value: Destination) -> Destination:
    if not value.is_web:
        raise ValueError(f"{value}: a polled source is a DICOMweb server "
                         "(http(s)://HOST/dicom-web), not a DIMSE peer")
    return value


def check_study_date(value: str) -> str:
    """``value`` if it is empty or a date ``YYYYMMDD`` (a DICOM DA); ValueError otherwise."""
    import datetime as dt

    if value:
        try:
            dt.datetime.strptime(value, "%Y%m%d")
        except ValueError:
            raise ValueError("not a date YYYYMMDD") from None
    return value


@dataclass(frozen=True)
class PollConfig:
    sources: list[Destination] = _opt([], "DICOMweb servers that amagi serve (role all or listener) "
                                      "polls for new videos, as 'amagi poll' does: URLs, or "
                                      "tables with the keys of a DICOMweb destination; empty: none",
                                      _check_poll_source, "URL[,URL...]")
    interval_s: float = _opt(60.0, "Seconds between two polls of a source", _check_positive)
    since: str = _opt("", "Only studies of this date or later (YYYYMMDD; empty: every date)",
                      check_study_date)
    recent_days: int = _opt(0, "Between two full listings, list only the studies of the last "
                            "N days (0: every poll lists every study)", _check_non_negative)
    full_every_h: float = _opt(24.0, "With recent_days: hours between two full listings (they "
                               "find videos added late to older studies)", _check_positive)


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _opt(False, "Serve Prometheus metrics over HTTP")
    port: int = _opt(9464, "Port of the metrics endpoint", _check_port)
    bind_address: str = _opt("127.0.0.1", "Address of the metrics endpoint")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _opt("info", "debug, info, warning or error",
                      _choice("debug", "info", "warning", "error"))
    format: str = _opt("text", "text (human-readable) or json (one object per line)",
                       _choice("text", "json"))
    file: Path | None = _opt(None, "Also log to this file")


@dataclass(frozen=True)
class Config:
    """The effective configuration, with the origin of every value in :attr:`sources`."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    file: Path | None = None

    # Derived locations: one place decides them.
    @property
    def var_dir(self) -> Path:
        return self.storage.var_dir

    @property
    def spool_dir(self) -> Path:
        return self.storage.spool_dir or self.storage.var_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.storage.results_dir or self.storage.var_dir / "results"

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.storage.var_dir / 'amagi.db'}"

    def get(self, key: str) -> Any:
        section, name = key.split(".", 1)
        return getattr(getattr(self, section), name)


@dataclass(frozen=True)
class Key:
    """One configuration key as the loader sees it."""

    section: str
    name: str
    type: Any
    default: Any
    help: str
    check: Any
    metavar: str | None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.name}".upper()

    @property
    def flag(self) -> str:
        return f"--{self.section}-{self.name}".replace("_", "-")


def keys() -> list[Key]:
    """Every configuration key, in section order."""
    out = []
    for sec in dataclasses.fields(Config):
        if sec.name in ("sources", "file"):
            continue
        cls = sec.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            out.append(Key(sec.name, f.name, hints[f.name], default, f.metadata["help"],
                           f.metadata["check"], f.metadata["metavar"]))
    return out


def _parse(key: Key, raw: Any) -> Any:
    """Coerce a raw value (a TOML value or a string from env/flags) to the key's type."""
    typ = key.type
    origin = typing.get_origin(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw in ("", None):
            return None
        typ, origin = args[0], typing.get_origin(args[0])
    if origin is list:
        (item,) = typing.get_args(typ)
        if isinstance(raw, str):
            raw = [p for p in re.split(r"[,\s]+", raw.strip()) if p]
        if not isinstance(raw, list):
            raise ValueError("expected a list")
        if item is Destination:
            return [Destination.parse(v) for v in raw]
        return [str(v) for v in raw]
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if typ is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("expected an integer")
        try:
            return int(raw)
        except (TypeError, ValueError) as e:
            raise ValueError("expected an integer") from e
    if typ is float:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        try:
            return float(raw)
        except (TypeError, ValueError) as e:
            raise ValueError("expected a number") from e
    if typ is Path:
        return Path(str(raw)).expanduser()
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw


def _coerce(key: Key, raw: Any, source: str) -> Any:
    try:
        value = _parse(key, raw)
        if key.check is not None and value is not None:
            value = ([key.check(v) for v in value] if isinstance(value, list)
                     else key.check(value))
    except ValueError as e:
        # A destination's error names the problem itself: its raw table is not echoed, as
        # it may hold a secret put where the name of its environment variable belongs.
        holds_peers = typing.get_args(key.type) == (Destination,)
        shown = "" if holds_peers else f"{_redact_url(repr(raw))}: "
        raise ConfigError(f"invalid value for {key.dotted} ({source}): {shown}{e}") from None
    return value


def _flatten_file(data: Mapping[str, Any], path: Path, known: dict[str, Key]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, Mapping):
            if section == "destinations":  # [[destinations]] as a top-level array of tables
                flat["delivery.destinations"] = body
                continue
            raise ConfigError(f"{path}: '{section}' must be a [section] table")
        for name, value in body.items():
            dotted = f"{section}.{name}"
            if dotted not in known:
                hint = difflib.get_close_matches(dotted, known, n=1)
                tip = f"; did you mean '{hint[0]}'?" if hint else ""
                raise ConfigError(f"{path}: unknown configuration key '{dotted}'{tip}")
            flat[dotted] = value
    return flat


def load_config(
    file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Build the effective configuration.

    Parameters
    ----------
    file
        TOML file; when ``None``, ``AMAGI_CONFIG`` from ``environ`` is used if set.
    environ
        Environment mapping (``os.environ`` when ``None``).
    overrides
        ``{"section.key": value}`` from command-line flags (strings or typed values).
    cwd
        Directory that relative paths from the environment and flags are resolved against
        (the current one when ``None``); relative paths in the file are resolved against
        the file's directory. Every path of the result is absolute.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    known = {k.dotted: k for k in keys()}
    values: dict[str, Any] = {d: k.default for d, k in known.items()}
    sources: dict[str, str] = dict.fromkeys(known, "default")

    path: Path | None = None
    if file is None and environ.get(CONFIG_ENV):
        file = environ[CONFIG_ENV]
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_absolute():
            path = cwd / path
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        for dotted, raw in _flatten_file(data, path, known).items():
            values[dotted] = _coerce(known[dotted], raw, f"file {path}")
            sources[dotted] = f"file {path}"

    for dotted, key in known.items():
        if key.env in environ:
            values[dotted] = _coerce(key, environ[key.env], f"env {key.env}")
            sources[dotted] = f"env {key.env}"

    for dotted, raw in (overrides or {}).items():
        if dotted not in known:
            hint = difflib.get_close_matches(dotted, known, n=1)
            tip = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown configuration key '{dotted}'{tip}")
        values[dotted] = _coerce(known[dotted], raw, "command line")
        sources[dotted] = "command line"

    # Relative paths are anchored once, here, so nothing later depends on the cwd: a path
    # from the file against the file's directory, one from the environment or a flag (or a
    # default) against ``cwd``.
    for dotted in known:
        base = path.parent if path is not None and sources[dotted] == f"file {path}" else cwd
        values[dotted] = _anchor(values[dotted], base)
        if dotted == "database.url":
            values[dotted] = _anchor_sqlite_url(values[dotted], base)

    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        section, name = dotted.split(".", 1)
        sections.setdefault(section, {})[name] = value
    built = {
        s.name: s.default_factory(**sections[s.name])  # type: ignore[misc]
        for s in dataclasses.fields(Config)
        if s.name in sections
    }
    return Config(**built, sources=sources, file=path)


def _anchor(value: Any, base: Path) -> Any:
    """``value`` with each relative path in it (a path key, a destination's TLS files)
    made absolute against ``base``."""
    if isinstance(value, Path):
        return value if value.is_absolute() else (base / value).resolve()
    if isinstance(value, Destination):
        return dataclasses.replace(value, **{k: _anchor(getattr(value, k), base)
                                             for k in _DEST_PATHS if getattr(value, k)})
    if isinstance(value, list):
        return [_anchor(v, base) for v in value]
    return value


def _anchor_sqlite_url(url: str, base: Path) -> str:
    """A SQLite URL with a relative file (``sqlite:///amagi.db``) made absolute against
    ``base``; any other URL as it is (a malformed one fails where it is opened)."""
    if not url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    from db.engine import sqlite_file

    try:
        file = sqlite_file(url)
        if file is None or file.is_absolute():
            return url
        return make_url(url).set(database=str((base / file).resolve())).render_as_string(
            hide_password=False)
    except Exception:
        return url


def _with_paths(table: Mapping[str, Any]) -> dict[str, Any]:
    """A destination table with its TLS files as paths (an empty string: none)."""
    out = dict(table)
    for k in _DEST_PATHS:
        if k in out:
            if not isinstance(out[k], str):
                raise ValueError(f"destination key {k} must be a string")
            out[k] = Path(out[k]).expanduser() if out[k] else None
    return out


def parse_set_option(text: str) -> tuple[str, str]:
    """``section.key=value`` from ``--set``."""
    dotted, sep, value = text.partition("=")
    if not sep or "." not in dotted:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    return dotted.strip(), value


def render_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    if value is None or value == "":
        return "(unset)"
    return str(value)


def template() -> str:
    """A commented TOML file listing every key with its default."""
    lines = ["# AMAGI plugin configuration. Every key is optional; shown with its default.",
             "# Override order: defaults < this file < AMAGI_<SECTION>_<KEY> < flags.", ""]
    current = None
    for key in keys():
        if key.section != current:
            current = key.section
            lines += ([""] if lines[-1] else []) + [f"[{current}]"]
        lines.append(f"# {key.help}  (env {key.env}, flag {key.flag})")
        lines.append(f"# {key.name} = {_toml_value(key.default)}")
    lines += ["", "# Destinations may also be tables, with TLS per destination:",
              "# [[delivery.destinations]]",
              '# ae_title = "PACS"', '# host = "pacs.example.org"', "# port = 11112",
              "# tls = true", '# tls_ca = "/etc/amagi/ca.pem"', "",
              "## or a DICOMweb server (STOW-RS); secrets come from the environment variable named:",
              "# [[delivery.destinations]]",
              '# url = "https://pacs.example.org/dicom-web"',
              '# auth = "basic"            # none, basic or bearer',
              '# username = "amagi"',
              '# password_env = "AMAGI_PACS_PASSWORD"   # bearer: token_env = "AMAGI_PACS_TOKEN"',
              '# tls_ca = "/etc/amagi/ca.pem"          # CA bundle verifying the server',
              "# timeout_s = 60.0", "",
              "## Polled DICOMweb servers (poll.sources) take the keys of a DICOMweb destination:",
              "# [[poll.sources]]",
              '# url = "https://archive.example.org/dicom-web"',
              '# auth = "bearer"',
              '# token_env = "AMAGI_ARCHIVE_TOKEN"']
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if value is None:
        return '""'
    return f'"{value}"'
