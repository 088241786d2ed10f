"""Sending instances to a DICOMweb server: STOW-RS (PS3.18 §10.5), through ``dicomweb-client``.

Each file is read from disk and posted as ``multipart/related; type="application/dicom"``
to ``{base_url}/studies``. The outcome of every instance comes from the server's answer:

* connection refused, timeouts, TLS failures, HTTP 5xx, 408 and 429 raise
  :class:`~dicom_io.errors.NetworkError`: nothing was stored, try again later;
* any other HTTP 4xx is a rejection: every instance of the request gets a
  :class:`~dicom_io.net.scu.SendResult` with ``rejected=True`` and the server's reason;
* a 2xx answer stores every instance, except those listed in the response's Failed SOP
  Sequence (with their Failure Reason), which are failed results to retry.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_io.errors import NetworkError
from dicom_io.net.scu import SendResult
from dicom_io.net.status import status_name

logger = logging.getLogger(__name__)

#: HTTP statuses below 500 that still mean "try again later" (RFC 9110 §15.5.9, RFC 6585 §4).
TRANSIENT_4XX = frozenset({408, 429})
#: Upper bounds of one STOW-RS request (the message is built in memory by the client).
MAX_INSTANCES_PER_REQUEST = 100
MAX_BYTES_PER_REQUEST = 64 << 20
#: Characters of a server's error body kept in a reason.
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class WebAuth:
    """Credentials for a DICOMweb server: HTTP basic (``username``, ``password``) or a bearer
    ``token``; both empty: no authentication."""

    username: str = ""
    password: str = ""
    token: str = ""

    def __repr__(self) -> str:  # never print a secret
        kind = "bearer" if self.token else "basic" if self.username else "none"
        return f"WebAuth({kind})"


def _session(auth: WebAuth | None, ca_file: str | os.PathLike[str] | None,
             cert_file: str | os.PathLike[str] | None, key_file: str | os.PathLike[str] | None):
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxy or .netrc credentials from the environment
    if ca_file:
        if not Path(ca_file).is_file():
            raise NetworkError(f"CA bundle {ca_file} does not exist or is not a file")
        session.verify = os.fspath(ca_file)
    if cert_file:
        for f in (cert_file, key_file):
            if f and not Path(f).is_file():
                raise NetworkError(f"client certificate file {f} does not exist or is not a file")
        session.cert = ((os.fspath(cert_file), os.fspath(key_file)) if key_file
                        else os.fspath(cert_file))
    if auth is not None and auth.token:
        session.headers["Authorization"] = f"Bearer {auth.token}"
    elif auth is not None and auth.username:
        session.auth = (auth.username, auth.password)
    return session


def _client(base_url: str, session, timeout: float):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(base_url, session=session, timeout=timeout)
    # Retries belong to the caller (persistent, with backoff): one attempt per call here.
    client.set_http_retry_params(retry=False)
    return client


def _batches(items: list[tuple[int, Path, int]]) -> list[list[tuple[int, Path, int]]]:
    batches: list[list[tuple[int, Path, int]]] = [[]]
    size = 0
    for item in items:
        if batches[-1] and (len(batches[-1]) >= MAX_INSTANCES_PER_REQUEST
                            or size + item[2] > MAX_BYTES_PER_REQUEST):
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item[2]
    return [b for b in batches if b]


def _server_reason(response) -> str:
    """The server's own words for an error answer: STOW-RS Failure Reasons, a JSON message
    (Orthanc: ``Message``/``Details``) or the start of the body."""
    body = response.content or b""
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        failed = _failures(doc)
        if failed:
            return "; ".join(f"{uid}: {why}" for uid, why in failed.items())
        parts = [str(doc[k]) for k in ("Message", "Details", "message", "error", "detail")
                 if doc.get(k)]
        if parts:
            return " - ".join(dict.fromkeys(parts))
    if text:
        return " ".join(text.split())[:MAX_REASON_CHARS]
    challenge = response.headers.get("WWW-Authenticate")
    return f"no reason given (WWW-Authenticate: {challenge})" if challenge else "no reason given"


def _failures(doc: dict) -> dict[str, str]:
    """``{SOP Instance UID: reason}`` from the Failed SOP Sequence of a DICOM JSON response."""
    try:
        ds = pydicom.Dataset.from_json(doc)
    except Exception:
        return {}
    return _failed_items(ds)


def _failed_items(ds: pydicom.Dataset) -> dict[str, str]:
    out = {}
    for item in ds.get("FailedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", "?"))
        code = item.get("FailureReason")
        out[uid] = f"Failure Reason {status_name(int(code))}" if code is not None else \
            "failed, no Failure Reason given"
    return out


def _http_error(e, url: str) -> tuple[int, str]:
    response = e.response
    code = response.status_code if response is not None else 0
    phrase = (response.reason or "") if response is not None else ""
    reason = _server_reason(response) if response is not None else str(e)
    return code, f"HTTP {code} {phrase} from {url}: {reason}".replace("  ", " ")


def store_instances(
    paths: Iterable[str | os.PathLike[str]],
    base_url: str,
    auth: WebAuth | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
) -> list[SendResult]:
    """STOW-RS files to a DICOMweb server.

    Parameters
    ----------
    paths : iterable of path
        PS3.10 files, posted as stored (read with pydicom and written back unchanged).
    base_url : str
        The service root, e.g. ``https://pacs.example.org/dicom-web``.
    auth : WebAuth, optional
        Basic or bearer credentials.
    ca_file : str, optional
        CA bundle (PEM) that verifies an ``https`` server; the system's store otherwise.
    cert_file, key_file : str, optional
        Client certificate and key (PEM) for mutual TLS.
    timeout : float
        Seconds to connect and to wait for the answer of one request.

    Returns
    -------
    list of SendResult
        One per path, in order; ``rejected`` when the server refused the request (4xx).

    Raises
    ------
    NetworkError
        When the server cannot be reached, times out, fails the TLS handshake or answers a
        transient error (5xx, 408, 429): nothing is known to be stored, try again later.
    """
    import requests

    paths = [Path(p) for p in paths]
    results: list[SendResult | None] = [None] * len(paths)
    items = []
    for i, path in enumerate(paths):
        try:
            items.append((i, path, path.stat().st_size))
        except OSError as e:
            results[i] = SendResult(path, None, None, False, f"cannot read {path}: {e.strerror}")
    url = base_url.rstrip("/")
    session = _session(auth, ca_file, cert_file, key_file)
    try:
        client = _client(url, session, timeout)
        for batch in _batches(items):
            datasets, batch_ok = [], []
            for i, path, _ in batch:
                try:
                    datasets.append(pydicom.dcmread(path))
                    batch_ok.append((i, path))
                except Exception as e:
                    results[i] = SendResult(path, None, None, False,
                                            f"cannot read {path}: {type(e).__name__}: {e}")
            if not datasets:
                continue
            uids = [str(ds.SOPInstanceUID) for ds in datasets]
            try:
                answer = client.store_instances(datasets)
            except requests.HTTPError as e:
                code, why = _http_error(e, url)
                if code >= 500 or code in TRANSIENT_4XX or code < 400:
                    raise NetworkError(why) from None
                logger.warning("STOW-RS to %s rejected: %s", url, why)
                for (i, path), uid in zip(batch_ok, uids, strict=True):
                    results[i] = SendResult(path, uid, code, False, why, rejected=True)
                continue
            except requests.Timeout:
                raise NetworkError(f"STOW-RS to {url}: no answer within {timeout:g} s") from None
            except requests.exceptions.SSLError as e:
                raise NetworkError(f"STOW-RS to {url}: TLS handshake failed: "
                                   f"{_root_cause(e)}") from None
            except requests.ConnectionError as e:
                raise NetworkError(f"STOW-RS to {url}: cannot connect: {_root_cause(e)}"
                                   ) from None
            except requests.RequestException as e:
                raise NetworkError(f"STOW-RS to {url} failed: {type(e).__name__}: {e}") from None
            except ValueError as e:  # an answer that is not a STOW-RS response
                raise NetworkError(f"STOW-RS to {url}: unreadable response: {e}") from None
            failed = _failed_items(answer)
            stored = {str(it.get("ReferencedSOPInstanceUID", ""))
                      for it in answer.get("ReferencedSOPSequence", [])}
            for (i, path), uid in zip(batch_ok, uids, strict=True):
                if uid in failed:
                    results[i] = SendResult(path, uid, None, False,
                                            f"{url} did not store it: {failed[uid]}")
                elif stored and uid not in stored:
                    results[i] = SendResult(path, uid, None, False,
                                            f"{url} did not list it as stored")
                else:
                    results[i] = SendResult(path, uid, 200, True, None)
            logger.info("STOW-RS: %d/%d instances stored at %s",
                        sum(1 for i, _ in batch_ok if (r := results[i]) is not None and r.ok),
                        len(batch_ok), url)
    finally:
        session.close()
    return [r for r in results if r is not None]


def _root_cause(e: BaseException) -> str:
    """The socket-level reason of a requests error (``[Errno 111] Connection refused``)."""
    reason = e.args[0] if e.args else e
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    msg = str(reason)
    return msg.rsplit(": ", 1)[-1] if "Failed to establish" in msg else msg
