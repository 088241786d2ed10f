"""Environment checks behind ``amagi doctor``: each check really exercises the component.

The configured peers are really contacted too: each DIMSE destination gets a C-ECHO
association, each DICOMweb destination and poll source one authenticated QIDO-RS query
(``studies?limit=1``), within :data:`PEER_TIMEOUT_S` seconds each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from amagi_plugin.config import Config, Destination
from db import mask_url

if TYPE_CHECKING:
    from dicom_io.net.webin import WebSource

TORCH_VERSION = "2.13.0"
REQUIRED_DECODERS = ("h264", "hevc", "mpeg2video")
TEST_ENCODERS = ("libx264", "libx265", "mpeg2video")
#: Longest wait (s) for one peer's answer: TCP connect, association, HTTP answer. A DICOMweb
#: peer whose ``timeout_s`` is shorter gets that.
PEER_TIMEOUT_S = 5.0
#: Peers contacted at the same time, so that dead ones cost one timeout, not one each.
PEER_THREADS = 8
#: HTTP statuses that mean "these credentials are not accepted".
AUTH_REFUSED = frozenset({401, 403, 407})


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"  # works, with a caveat, or an optional part is missing
    FAIL = "FAIL"  # a required part is missing or broken


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.required and self.status is Status.FAIL


def _version(module: str) -> str:
    mod = importlib.import_module(module)
    return getattr(mod, "__version__", "?")


def check_python_packages() -> Iterator[Check]:
    for module in ("numpy", "pydicom", "pynetdicom", "highdicom", "monai", "av", "sqlalchemy",
                   "alembic"):
        try:
            yield Check(module, Status.OK, _version(module))
        except Exception as e:
            yield Check(module, Status.FAIL, f"cannot import: {e}")


def check_torch() -> Iterator[Check]:
    try:
        import torch
    except Exception as e:
        yield Check("torch", Status.FAIL, f"cannot import: {e}")
        return
    version = torch.__version__.split("+")[0]
    status = Status.OK if version == TORCH_VERSION else Status.FAIL
    yield Check("torch", status, f"{torch.__version__}, {torch.get_num_threads()} threads"
                + ("" if status is Status.OK else f" (expected {TORCH_VERSION})"))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        yield Check("cuda", Status.OK, names, required=False)
    else:
        yield Check("cuda", Status.WARN, "not available: inference runs on the CPU", required=False)
    yield _training_precision("cuda" if torch.cuda.is_available() else "cpu")


def _training_precision(device: str) -> Check:
    """Whether ``amagi train --precision bf16`` can run on ``device`` (it is refused where
    bf16 would be emulated)."""
    from amagi_plugin.modelspec import bf16_native

    if bf16_native(device):
        return Check("training precision", Status.OK, f"fp32 or bf16 ({device} computes "
                     "bfloat16 natively: amagi train --precision bf16)", required=False)
    return Check("training precision", Status.OK, f"fp32 ({device} computes no bfloat16 "
                 "natively: amagi train --precision bf16 is refused)", required=False)


def check_pyav() -> Iterator[Check]:
    import av

    for name in REQUIRED_DECODERS:
        try:
            av.codec.Codec(name, "r")
            yield Check(f"decoder {name}", Status.OK, "present")
        except Exception as e:
            yield Check(f"decoder {name}", Status.FAIL, f"missing from PyAV's FFmpeg: {e}")
    for name in TEST_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            yield Check(f"encoder {name}", Status.OK, "present (tests, synthetic data)",
                        required=False)
        except Exception:
            yield Check(f"encoder {name}", Status.WARN, "missing: tests and 'amagi synth' need it",
                        required=False)


def check_database(cfg: Config) -> Check:
    url = cfg.database_url
    name = "database"
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            parent = next(p for p in [path.parent, *path.parents] if p.exists())
            if os.access(parent, os.W_OK):
                return Check(name, Status.OK, f"{path} will be created at first start")
            return Check(name, Status.FAIL, f"{path}: directory {parent} is not writable")
    try:
        from sqlalchemy import create_engine

        from db.migrate import status

        engine = create_engine(url)
        try:
            current, head = status(engine)
        finally:
            engine.dispose()
    except Exception as e:
        return Check(name, Status.FAIL, f"unreachable ({mask_url(url)}): "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if current == head:
        return Check(name, Status.OK, f"{mask_url(url)} at revision {current}")
    return Check(name, Status.WARN, f"{mask_url(url)} at revision {current or 'none'}, head is "
                 f"{head}: upgraded automatically at start ('amagi db upgrade' does it now)")


def check_spool(cfg: Config) -> Check:
    spool = cfg.spool_dir
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spool, prefix=".doctor-") as fh:
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        return Check("spool", Status.FAIL, f"{spool} is not writable: {e.strerror or e}")
    free_mb = shutil.disk_usage(spool).free // (1 << 20)
    reserve = cfg.storage.reserve_mb
    if free_mb <= reserve:
        return Check("spool", Status.FAIL, f"{spool}: {free_mb} MiB free, under the reserve of "
                     f"{reserve} MiB (C-STORE would answer A700)")
    return Check("spool", Status.OK, f"{spool} writable, {free_mb} MiB free (reserve {reserve} MiB)")


def check_model(cfg: Config) -> Check:
    from amagi_plugin.modelspec import resolve_model

    try:
        spec = resolve_model(cfg.model)
    except Exception as e:
        return Check("model", Status.FAIL, str(e))
    try:
        from amagi_plugin.modelspec import load_model

        model = load_model(spec)  # as analyses build it: the manifest's build overrides included
    except Exception as e:
        return Check("model", Status.FAIL, f"{spec.checkpoint} does not load into {spec.arch}: {e}")
    extra = ""
    if spec.refiner is not None:
        from models.refiner import load_refiner

        try:
            load_refiner(spec.refiner)
        except Exception as e:
            return Check("model", Status.FAIL, f"refiner {spec.refiner} does not load: {e}")
        extra += f", refined by {spec.refiner.name}"
    if spec.probe:
        from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
        from models.patchnet import load_probe

        named = ", ".join(map(str, spec.probe))
        try:
            BleedingAnalyzer.for_model(model, AnalysisOptions(), probe=load_probe(list(spec.probe)),
                                       probe_use=spec.probe_use)
        except Exception as e:
            return Check("model", Status.FAIL, f"probe {named} does not fit: {e}")
        extra += f", probed by {' + '.join(p.name for p in spec.probe)}"
    return Check("model", Status.OK,
                 f"{spec.label}: {spec.checkpoint} loads into {spec.arch}{extra}")


def check_backend(cfg: Config) -> Check:
    """What runs the networks (``model.backend``): present, and able to on ``model.device``;
    and the precision the analysis computes in there (bf16 only where ``model.fast`` or
    ``model.bf16`` asks for it and the device computes it natively; ``model.bf16`` where the
    analysis would refuse it, emulated, fails here too)."""
    from amagi_plugin.backends import check_backend as refuse
    from amagi_plugin.backends import import_openvino
    from amagi_plugin.fastpath import checked_bf16
    from amagi_plugin.modelspec import bf16_native, resolve_device

    try:
        device = resolve_device(cfg.model.device)
        refuse(cfg.model.backend, device)
        bf16 = checked_bf16(cfg.model.bf16, device)  # as the analysis: refused if emulated
        name = "torch"
        if cfg.model.backend == "openvino":
            name = f"openvino {import_openvino().__version__.split('-')[0]}, on the CPU"
    except Exception as e:
        return Check("backend", Status.FAIL, _one_line(e))
    native = bf16_native(device)
    if cfg.model.fast and not native:
        precision = f"fp32 (model.fast: {device} computes no bf16 natively)"
    else:
        precision = "bf16" if bf16 or cfg.model.fast else "fp32"
    return Check("backend", Status.OK, f"{name}, {precision}")


def check_tools() -> Iterator[Check]:
    for tool, what in (("dciodvfy", "dicom3tools, validates written objects"),
                       ("storescu", "DCMTK, used by integration tests"),
                       ("dsrdump", "DCMTK, renders SR trees"),
                       ("Orthanc", "Orthanc, the PACS of integration tests")):
        if what.startswith("DCMTK"):
            yield _dcmtk_check(tool, what)
            continue
        path = shutil.which(tool)
        if path:
            yield Check(tool, Status.OK, f"{path} ({what})", required=False)
        else:
            yield Check(tool, Status.WARN, f"not found ({what}; optional)", required=False)


def _dcmtk_check(tool: str, what: str) -> Check:
    """DCMTK's ``tool``, and a warning when pynetdicom's program of that name comes first on
    PATH (its ``storescu`` in an activated environment, which takes other options)."""
    from dicom_io.tools import DcmtkNotFoundError, dcmtk_program, shadowing

    try:
        path = dcmtk_program(tool)
    except DcmtkNotFoundError as e:
        return Check(tool, Status.WARN, f"{e} ({what}; optional)", required=False)
    first = shadowing(tool)
    if first:
        return Check(tool, Status.WARN, f"`{tool}` runs {first[0]}, pynetdicom's program of "
                     f"that name (other options), not DCMTK's: call {path} ({what})",
                     required=False)
    return Check(tool, Status.OK, f"{path} ({what})", required=False)


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _why_no_association(dest: Destination, timeout: float, elapsed: float) -> str:
    """Why an association with ``dest`` was not made, when pynetdicom only says that it
    was not: no answer in time, or a plain TCP connection tells refused, unknown host..."""
    if elapsed >= 0.9 * timeout:
        return f"no answer within {timeout:g} s"
    try:
        with socket.create_connection((dest.host, dest.port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror as e:
        return f"host {dest.host} not found: {e.strerror}"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as e:
        return f"cannot connect: {e.strerror or e}"
    if dest.tls:
        return "TLS handshake failed (or the peer closed the connection)"
    return "the peer closed the connection without answering the association request"


def check_dimse_destination(dest: Destination, calling_ae: str,
                            timeout: float = PEER_TIMEOUT_S) -> Check:
    """C-ECHO ``dest`` as ``calling_ae`` (PS3.7 §9.1.5) over the association, and the TLS
    settings, that deliveries use; OK with the time of association, echo and release."""
    from amagi_plugin.service.outbound import client_tls
    from dicom_io.errors import AssociationRejectedError, EchoFailedError, NetworkError
    from dicom_io.net.scu import echo

    name = f"destination {dest.key}"
    try:
        tls = client_tls(dest)
    except Exception as e:
        return Check(name, Status.FAIL, f"TLS settings: {_one_line(e)}")
    start = time.monotonic()
    try:
        echo(dest.ae_title, dest.host, dest.port, calling_ae_title=calling_ae, tls=tls,
             timeout=timeout)
    except AssociationRejectedError as e:
        return Check(name, Status.FAIL, f"{_one_line(e)}; we call as {calling_ae}")
    except EchoFailedError as e:
        return Check(name, Status.FAIL, _one_line(e))
    except (NetworkError, OSError):  # OSError: pynetdicom lets a DNS failure through
        return Check(name, Status.FAIL,
                     _why_no_association(dest, timeout, time.monotonic() - start))
    except Exception as e:
        return Check(name, Status.FAIL, f"C-ECHO failed: {_one_line(e)}")
    ms = (time.monotonic() - start) * 1000
    return Check(name, Status.OK, f"C-ECHO answered, {ms:.0f} ms with association and release "
                 f"(we call as {calling_ae}{', TLS' if dest.tls else ''})")


def _qido_probe(source: WebSource) -> float:
    """One QIDO-RS ``studies?limit=1`` to ``source``; the seconds it took.

    Raises the errors of :func:`dicom_io.net.web.raise_for` (and the session's)."""
    import requests

    from dicom_io.net.web import raise_for

    http, web = source.connect()
    try:
        start = time.monotonic()
        try:
            web.search_for_studies(limit=1)
        except (requests.RequestException, ValueError) as e:
            raise_for(e, "QIDO-RS", source.base_url, source.timeout)
        return time.monotonic() - start
    finally:
        http.close()


def _web_outcome(peer: Destination, poll_source: bool, environ: Mapping[str, str]
                 ) -> tuple[Status, str]:
    from amagi_plugin.errors import ConfigError
    from amagi_plugin.webin import peer_source
    from dicom_io.errors import DicomIOError
    from dicom_io.net.web import WebRefusedError

    try:  # the secret and TLS files as amagi serve and deliveries read them
        took = _qido_probe(peer_source(peer, environ,
                                       "DICOMweb source" if poll_source else "destination"))
    except WebRefusedError as e:
        if poll_source or e.status in AUTH_REFUSED:
            return Status.FAIL, _one_line(e)
        return Status.WARN, (f"reachable, but its QIDO-RS answered HTTP {e.status}: STOW-RS "
                             "and its credentials are first tested by a delivery")
    except (ConfigError, DicomIOError) as e:
        return Status.FAIL, _one_line(e)
    except Exception as e:
        return Status.FAIL, f"QIDO-RS failed: {type(e).__name__}: {_one_line(e)}"
    auth = "" if peer.auth == "none" else f", {peer.auth} auth accepted"
    return Status.OK, f"QIDO-RS answered in {took * 1000:.0f} ms{auth}"


def check_web_peer(peer: Destination, poll_source: bool, environ: Mapping[str, str],
                   timeout: float = PEER_TIMEOUT_S) -> Check:
    """One authenticated QIDO-RS query to a DICOMweb poll source or STOW-RS destination,
    its secret read from ``environ`` and its TLS files used as the service uses them,
    within ``timeout`` seconds (the peer's ``timeout_s`` when shorter).

    A destination that refuses the query for good (HTTP 4xx other than 401/403/407, or 501
    Not Implemented) is a warning: it is reachable but may offer STOW-RS only (doctor sends
    nothing). A server error that may pass (500, 502, 503...) is a failure: the peer does
    not work now."""
    name = f"{'poll source' if poll_source else 'destination'} {peer.key}"
    peer = dataclasses.replace(peer, timeout_s=min(peer.timeout_s, timeout))
    status, detail = _web_outcome(peer, poll_source, environ)
    return Check(name, status, detail)


def check_peers(cfg: Config, environ: Mapping[str, str] | None = None,
                timeout: float = PEER_TIMEOUT_S) -> list[Check]:
    """Contact every destination (``delivery.destinations``) and poll source
    (``poll.sources``), :data:`PEER_THREADS` at a time; one check each, in that order.

    Parameters
    ----------
    cfg : Config
        The destinations, the poll sources and ``delivery.calling_ae_title``.
    environ : mapping, optional
        Where the DICOMweb peers' secrets are read (``os.environ`` by default).
    timeout : float
        Longest wait for one peer, seconds.
    """
    env = os.environ if environ is None else environ
    calling = cfg.delivery.calling_ae_title
    probes: list[Callable[[], Check]] = []
    for dest in cfg.delivery.destinations:
        if dest.is_web:
            probes.append(lambda d=dest: check_web_peer(d, False, env, timeout))
        else:
            probes.append(lambda d=dest: check_dimse_destination(d, calling, timeout))
    for src in cfg.poll.sources:
        probes.append(lambda s=src: check_web_peer(s, True, env, timeout))
    if not probes:
        return [Check("peers", Status.OK,
                      "none configured (delivery.destinations and poll.sources are empty)")]
    with _library_errors_quiet("pynetdicom"), ThreadPoolExecutor(
            max_workers=min(PEER_THREADS, len(probes)),
            thread_name_prefix="doctor-peer") as pool:
        return list(pool.map(lambda probe: probe(), probes))


@contextlib.contextmanager
def _library_errors_quiet(name: str) -> Iterator[None]:
    """A library's own error logs silenced while the checks run (each failure is reported
    in the check's row instead), unless its logger is at debug level (``--debug``)."""
    logger = logging.getLogger(name)
    if logger.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


def run_checks(cfg: Config, progress: Callable[[str], None] | None = None,
               environ: Mapping[str, str] | None = None,
               peer_timeout: float = PEER_TIMEOUT_S) -> list[Check]:
    """Run every check; ``progress`` is told the name of each group before it runs.

    ``environ`` holds the DICOMweb peers' secrets (``os.environ`` by default);
    ``peer_timeout`` is the longest wait for one peer, in seconds."""
    groups: list[tuple[str, Callable[[], object]]] = [
        ("python packages", check_python_packages),
        ("torch", check_torch),
        ("PyAV codecs", check_pyav),
        ("database", lambda: check_database(cfg)),
        ("spool", lambda: check_spool(cfg)),
        ("model", lambda: check_model(cfg)),
        ("backend", lambda: check_backend(cfg)),
        ("DICOM tools", check_tools),
        ("peers", lambda: check_peers(cfg, environ, peer_timeout)),
    ]
    results: list[Check] = []
    for title, fn in groups:
        if progress:
            progress(title)
        out = fn()
        results.extend([out] if isinstance(out, Check) else list(out))  # type: ignore[arg-type]
    return results

