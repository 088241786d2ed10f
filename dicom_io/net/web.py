"""What every DICOMweb exchange shares: credentials, the HTTP session (TLS, authentication),
the ``dicomweb-client`` client, and the reading of a server's error answers.

:mod:`~dicom_io.net.stow` (STOW-RS out) and :mod:`~dicom_io.net.webin` (QIDO-RS and WADO-RS
in) build their sessions here, so the two directions verify TLS and authenticate alike.

Errors (:func:`raise_for`):

* connection refused, timeouts, TLS failures, HTTP 5xx, 408 and 429:
  :class:`~dicom_io.errors.NetworkError` (transient: try again later);
* any other HTTP 4xx: :class:`WebRefusedError`, with the status and the server's reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_io.errors import DicomIOError, NetworkError
from dicom_io.net.status import status_name

#: HTTP statuses below 500 that still mean "try again later" (RFC 9110 §15.5.9, RFC 6585 §4).
TRANSIENT_4XX = frozenset({408, 429})
#: HTTP statuses of 500 and over that will not change on a retry: the server does not
#: implement the method (501) or the HTTP version (505) (RFC 9110 §15.6.2, §15.6.6).
PERMANENT_5XX = frozenset({501, 505})
#: Characters of a server's error body kept in a reason.
MAX_REASON_CHARS = 500


class WebRefusedError(DicomIOError):
    """A DICOMweb server refused a request (HTTP 4xx other than 408/429, or 501/505): not
    transient."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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


def session(auth: WebAuth | None = None, ca_file: str | os.PathLike[str] | None = None,
            cert_file: str | os.PathLike[str] | None = None,
            key_file: str | os.PathLike[str] | None = None):
    """A :class:`requests.Session` that verifies TLS with ``ca_file`` (the system's store
    otherwise), presents ``cert_file``/``key_file`` for mutual TLS and authenticates."""
    import requests

    s = requests.Session()
    s.trust_env = False  # no proxy or .netrc credentials from the environment
    if ca_file:
        if not Path(ca_file).is_file():
            raise NetworkError(f"CA bundle {ca_file} does not exist or is not a file")
        s.verify = os.fspath(ca_file)
    if cert_file:
        for f in (cert_file, key_file):
            if f and not Path(f).is_file():
                raise NetworkError(f"client certificate file {f} does not exist or is not a file")
        s.cert = ((os.fspath(cert_file), os.fspath(key_file)) if key_file
                  else os.fspath(cert_file))
    if auth is not None and auth.token:
        s.headers["Authorization"] = f"Bearer {auth.token}"
    elif auth is not None and auth.username:
        s.auth = (auth.username, auth.password)
    return s


def client(base_url: str, http_session, timeout: float):
    """A ``dicomweb-client`` client on ``http_session``, one attempt per call (retries belong
    to the caller, persistent and with backoff)."""
    from dicomweb_client.api import DICOMwebClient

    c = DICOMwebClient(base_url, session=http_session, timeout=timeout)
    c.set_http_retry_params(retry=False)
    return c


def server_reason(response) -> str:
    """The server's own words for an error answer: STOW-RS Failure Reasons, a JSON message
    (Orthanc: ``Message``/``Details``) or the start of the body."""
    body = response.content or b""
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        failed = failures(doc)
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


def failures(doc: dict) -> dict[str, str]:
    """``{SOP Instance UID: reason}`` from the Failed SOP Sequence of a DICOM JSON response."""
    try:
        ds = pydicom.Dataset.from_json(doc)
    except Exception:
        return {}
    return failed_items(ds)


def failed_items(ds: pydicom.Dataset) -> dict[str, str]:
    """``{SOP Instance UID: reason}`` from a data set's Failed SOP Sequence."""
    out = {}
    for item in ds.get("FailedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", "?"))
        code = item.get("FailureReason")
        out[uid] = f"Failure Reason {status_name(int(code))}" if code is not None else \
            "failed, no Failure Reason given"
    return out


def http_error(e, url: str) -> tuple[int, str]:
    """``(status, one-line message)`` of a :class:`requests.HTTPError`."""
    response = e.response
    code = response.status_code if response is not None else 0
    phrase = (response.reason or "") if response is not None else ""
    reason = server_reason(response) if response is not None else str(e)
    return code, f"HTTP {code} {phrase} from {url}: {reason}".replace("  ", " ")


def is_transient(code: int) -> bool:
    """Whether an HTTP status means "try again later" (5xx but 501/505, 408, 429, or no
    status)."""
    if code >= 500:
        return code not in PERMANENT_5XX
    return code in TRANSIENT_4XX or code < 400


def raise_for(e: Exception, what: str, url: str, timeout: float) -> None:
    """Raise the error of this module for an exception of ``requests`` (or of an unreadable
    answer, :class:`ValueError`) met while doing ``what`` (``"QIDO-RS"``...) at ``url``;
    re-raise anything else."""
    import requests

    if isinstance(e, requests.HTTPError):
        code, why = http_error(e, url)
        if is_transient(code):
            raise NetworkError(f"{what}: {why}") from None
        raise WebRefusedError(f"{what}: {why}", code) from None
    if isinstance(e, requests.Timeout):
        raise NetworkError(f"{what} to {url}: no answer within {timeout:g} s") from None
    if isinstance(e, requests.exceptions.SSLError):
        raise NetworkError(f"{what} to {url}: TLS handshake failed: {root_cause(e)}") from None
    if isinstance(e, requests.ConnectionError):
        raise NetworkError(f"{what} to {url}: cannot connect: {root_cause(e)}") from None
    if isinstance(e, requests.RequestException):
        raise NetworkError(f"{what} to {url} failed: {type(e).__name__}: {e}") from None
    if isinstance(e, ValueError):
        raise NetworkError(f"{what} to {url}: unreadable response: {e}") from None
    raise e


def root_cause(e: BaseException) -> str:
    """The socket-level reason of a requests error (``[Errno 111] Connection refused``)."""
    reason = e.args[0] if e.args else e
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    msg = str(reason)
    return msg.rsplit(": ", 1)[-1] if "Failed to establish" in msg else msg
