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

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pydicom

from dicom_io.errors import NetworkError
from dicom_io.net.scu import SendResult
from dicom_io.net.web import (
    WebAuth,
    client,
    failed_items,
    http_error,
    is_transient,
    raise_for,
    session,
)

__all__ = ["WebAuth", "store_instances"]  # WebAuth lives in dicom_io.net.web; kept importable here

logger = logging.getLogger(__name__)

#: Upper bounds of one STOW-RS request (the message is built in memory by the client).
MAX_INSTANCES_PER_REQUEST = 100
MAX_BYTES_PER_REQUEST = 64 << 20


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
    http = session(auth, ca_file, cert_file, key_file)
    try:
        web = client(url, http, timeout)
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
                answer = web.store_instances(datasets)
            except requests.HTTPError as e:
                code, why = http_error(e, url)
                if is_transient(code):
                    raise NetworkError(why) from None
                logger.warning("STOW-RS to %s rejected: %s", url, why)
                for (i, path), uid in zip(batch_ok, uids, strict=True):
                    results[i] = SendResult(path, uid, code, False, why, rejected=True)
                continue
            except (requests.RequestException, ValueError) as e:
                raise_for(e, "STOW-RS", url, timeout)
            failed = failed_items(answer)
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
        http.close()
    return [r for r in results if r is not None]

