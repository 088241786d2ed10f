"""Sending instances to a peer: C-STORE SCU and C-ECHO SCU (PS3.4 Annex A, B; PS3.7 §9.1).

Each file is proposed with its own SOP class and its exact transfer syntax, and streamed
from disk unchanged (:data:`CHUNKED_SEND`, held while sending), so the peer receives the same bytes.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association

from dicom_io.errors import AssociationRejectedError, EchoFailedError, NetworkError
from dicom_io.net.contexts import VERIFICATION
from dicom_io.net.status import is_success, status_name
from dicom_io.process_setting import ProcessSetting

logger = logging.getLogger(__name__)

DEFAULT_MAX_PDU = 262144
#: PS3.8 §9.3.2.2: at most 128 presentation contexts (odd IDs 1-255) per association.
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class SendResult:
    """Outcome of one C-STORE.

    Attributes
    ----------
    path : Path
        The file sent.
    sop_instance_uid : str or None
        From its File Meta; ``None`` when the file could not be read.
    status : int or None
        The DIMSE status from the peer; ``None`` when no response was received (not sent,
        no context, association ended).
    ok : bool
        ``True`` for Success and Warning statuses (the peer stored it).
    error : str or None
        One line saying what went wrong, ``None`` when ``ok``.
    rejected : bool
        The peer refused it in a way that sending it again cannot change (a DICOMweb
        server's HTTP 4xx): record the failure, do not retry.
    """

    path: Path
    sop_instance_uid: str | None
    status: int | None
    ok: bool
    error: str | None
    rejected: bool = False


def _set_chunked_send(value: bool) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = value


#: pynetdicom streams files given by path from disk while this is ``True``; the flag is
#: process-wide (``pynetdicom._config``), held by each :func:`send_instances` call while it
#: runs. Only ``send_c_store(path)`` is affected (it then requires an exact transfer-syntax
#: match, which :func:`send_instances` always proposes); sending a Dataset is unchanged.
CHUNKED_SEND = ProcessSetting("pynetdicom STORE_SEND_CHUNKED_DATASET",
                              lambda: _config.STORE_SEND_CHUNKED_DATASET, _set_chunked_send)


@dataclass(frozen=True)
class _Item:
    index: int
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str


def _make_ae(calling_ae_title: str, timeout: float, max_pdu: int) -> AE:
    if not 0 < len(calling_ae_title.strip()) <= 16:
        raise ValueError(f"calling_ae_title must be 1-16 characters, got {calling_ae_title!r}")
    ae = AE(ae_title=calling_ae_title.strip())
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = max_pdu
    return ae


def peer_name(ae_title: str, host: str, port: int) -> str:
    """How errors and log lines name a DIMSE peer: ``AE_TITLE@host:port``."""
    return f"{ae_title}@{host}:{port}"


def _associate(ae: AE, ae_title: str, host: str, port: int, max_pdu: int,
               tls: ssl.SSLContext | None, server_hostname: str | None,
               evt_handlers: list[Any] | None = None) -> Association:
    tls_args = (tls, server_hostname or host) if tls is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, max_pdu=max_pdu, tls_args=tls_args,
                         evt_handlers=evt_handlers)
    if assoc.is_established:
        return assoc
    peer = peer_name(ae_title, host, port)
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        detail = (f"{rsp.result_str}, source {rsp.source_str}, reason {rsp.reason_str}"
                  if rsp is not None and rsp.result is not None else "no details")
        raise AssociationRejectedError(f"{peer} rejected the association ({detail})")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        return assoc  # negotiated, but nothing usable: reported per instance by the caller
    raise NetworkError(f"no association with {peer}: connection refused, timed out, "
                       f"TLS handshake failed or aborted by the peer")


def _read_items(paths: Iterable[str | os.PathLike[str]],
                results: list[SendResult | None]) -> list[_Item]:
    items = []
    for index, p in enumerate(paths):
        path = Path(p)
        results.append(None)
        try:
            meta = read_file_meta_info(path)
            item = _Item(index, path, str(meta.MediaStorageSOPClassUID),
                         str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID))
        except Exception as e:
            results[index] = SendResult(path, None, None, False,
                                        f"cannot read the File Meta of {path}: "
                                        f"{type(e).__name__}: {e}")
            continue
        items.append(item)
    return items


def _batches(items: list[_Item]) -> list[list[_Item]]:
    """Split into batches needing at most :data:`MAX_CONTEXTS` distinct contexts each."""
    batches: list[list[_Item]] = [[]]
    contexts: set[tuple[str, str]] = set()
    for item in items:
        key = (item.sop_class, item.transfer_syntax)
        if key not in contexts and len(contexts) == MAX_CONTEXTS:
            batches.append([])
            contexts = set()
        contexts.add(key)
        batches[-1].append(item)
    return [b for b in batches if b]


def _send_one(assoc: Association, item: _Item) -> SendResult:
    accepted = any(cx.abstract_syntax == item.sop_class
                   and cx.transfer_syntax[0] == item.transfer_syntax
                   for cx in assoc.accepted_contexts)
    if not accepted:
        return SendResult(item.path, item.sop_instance, None, False,
                          f"peer refused SOP class {item.sop_class} with transfer syntax "
                          f"{item.transfer_syntax}")
    if not assoc.is_established:
        return SendResult(item.path, item.sop_instance, None, False,
                          "association ended before this instance was sent")
    try:
        rsp = assoc.send_c_store(item.path)
    except (ValueError, AttributeError, OSError) as e:
        return SendResult(item.path, item.sop_instance, None, False,
                          f"cannot send: {type(e).__name__}: {e}")
    if "Status" not in rsp:
        return SendResult(item.path, item.sop_instance, None, False,
                          "no C-STORE response (DIMSE timeout or association aborted)")
    status = int(rsp.Status)
    ok = is_success(status)
    return SendResult(item.path, item.sop_instance, status, ok,
                      None if ok else f"peer answered {status_name(status)}")


def send_instances(
    paths: Iterable[str | os.PathLike[str]],
    ae_title: str,
    host: str,
    port: int,
    calling_ae_title: str = "AMAGI",
    tls: ssl.SSLContext | None = None,
    timeout: float = 30.0,
    max_pdu: int = DEFAULT_MAX_PDU,
    tls_server_hostname: str | None = None,
) -> list[SendResult]:
    """C-STORE files to a peer over one association (more only past 128 contexts).

    Parameters
    ----------
    paths : iterable of path
        PS3.10 files; each is proposed with its own SOP class and exact transfer syntax
        and streamed from disk as stored.
    ae_title : str
        The peer's (called) AE title.
    host, port : str, int
        The peer's address.
    calling_ae_title : str
        Our AE title.
    tls : ssl.SSLContext, optional
        Client context from :func:`dicom_io.net.tls.client_context`.
    timeout : float
        Seconds for TCP connect, ACSE, DIMSE and network idle.
    max_pdu : int
        Maximum PDU size we receive, bytes.
    tls_server_hostname : str, optional
        Name to verify in the peer certificate; ``host`` by default.

    Returns
    -------
    list of SendResult
        One per path, in order.

    Raises
    ------
    NetworkError
        When the peer cannot be reached, the TLS handshake fails, or it rejects the
        association. Per-instance failures are results, not exceptions.
    """
    with CHUNKED_SEND.held(True):
        return _send_all(paths, ae_title, host, port, calling_ae_title, tls, timeout, max_pdu,
                         tls_server_hostname)


def _send_all(paths: Iterable[str | os.PathLike[str]], ae_title: str, host: str, port: int,
              calling_ae_title: str, tls: ssl.SSLContext | None, timeout: float, max_pdu: int,
              tls_server_hostname: str | None) -> list[SendResult]:
    results: list[SendResult | None] = []
    items = _read_items(paths, results)
    for batch in _batches(items):
        ae = _make_ae(calling_ae_title, timeout, max_pdu)
        for key in dict.fromkeys((i.sop_class, i.transfer_syntax) for i in batch):
            ae.add_requested_context(key[0], key[1])
        assoc = _associate(ae, ae_title, host, port, max_pdu, tls, tls_server_hostname)
        try:
            for item in batch:
                results[item.index] = _send_one(assoc, item)
        finally:
            if assoc.is_established:
                assoc.release()
        sent = sum(1 for i in batch if (r := results[i.index]) is not None and r.ok)
        logger.info("sent %d/%d instances to %s@%s:%d", sent, len(batch), ae_title, host, port)
    return [r for r in results if r is not None]


def echo(
    ae_title: str,
    host: str,
    port: int,
    calling_ae_title: str = "AMAGI",
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
    tls_server_hostname: str | None = None,
) -> None:
    """C-ECHO a peer (Verification SOP Class, PS3.4 Annex A); returns when it answered
    Success.

    Raises
    ------
    NetworkError
        When no association could be made (unreachable, TLS failure, rejected:
        :class:`~dicom_io.errors.AssociationRejectedError`).
    EchoFailedError
        When the association was made but the peer accepted no Verification context,
        answered a status other than Success, or answered nothing within ``timeout``.
    """
    peer = peer_name(ae_title, host, port)
    ae = _make_ae(calling_ae_title, timeout, DEFAULT_MAX_PDU)
    ae.add_requested_context(VERIFICATION)
    assoc = _associate(ae, ae_title, host, port, DEFAULT_MAX_PDU, tls, tls_server_hostname)
    try:
        if not assoc.is_established:
            raise EchoFailedError(f"{peer} accepted the association but not the Verification "
                                  f"SOP Class ({VERIFICATION}): it does not answer C-ECHO")
        rsp = assoc.send_c_echo()
        if "Status" not in rsp:
            raise EchoFailedError(f"{peer} sent no C-ECHO response within {timeout:g} s")
        if (status := int(rsp.Status)) != 0:
            raise EchoFailedError(f"{peer} answered C-ECHO with status {status_name(status)}")
    finally:
        if assoc.is_established:
            assoc.release()
