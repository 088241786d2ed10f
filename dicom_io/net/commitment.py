"""Storage Commitment Push Model, SCU side (PS3.4 Annex J).

:func:`request_storage_commitment` sends the N-ACTION request (Action Type 1) listing the
instances, then waits for the SCP's N-EVENT-REPORT (Event Type 1: all committed, 2: some
failed) on the same association. PS3.4 J.3.3 lets the SCP send it later on an association
it opens to us instead (Orthanc always does): with ``report_wait`` the request returns
``None`` when no report came on its own association, and the listener receives the report
(:func:`handle_report` turns the N-EVENT-REPORT into a :class:`CommitmentReport`, matched
to the request by its Transaction UID).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.dimse_messages import N_EVENT_REPORT_RSP
from pynetdicom.pdu import P_DATA_TF

from dicom_io.errors import NetworkError
from dicom_io.net.checks import check_uid
from dicom_io.net.scu import DEFAULT_MAX_PDU, _associate, _make_ae, peer_name

logger = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # well-known SOP instance
_REQUEST_COMMITMENT = 1
_EVENT_SUCCESS, _EVENT_FAILURES = 1, 2
_IDLE_MARGIN_S = 10.0  # idle time allowed beyond the report wait before pynetdicom aborts
_RESPONSE_SEND_S = 5.0  # for the response to a report acknowledged as the wait ended


@dataclass(frozen=True)
class CommitmentResult:
    """Commitment outcome of one instance.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid : str
        The instance.
    committed : bool
        ``True`` when the SCP listed it in Referenced SOP Sequence (it takes responsibility).
    failure_reason : int or None
        Failure Reason (0008,1197) when listed in Failed SOP Sequence (e.g. 0x0112 no such
        object instance), ``None`` if committed or not mentioned in the report.
    """

    sop_class_uid: str
    sop_instance_uid: str
    committed: bool
    failure_reason: int | None


@dataclass(frozen=True)
class CommitmentReport:
    """One N-EVENT-REPORT of a Storage Commitment SCP, whichever association brought it.

    Attributes
    ----------
    transaction_uid : str
        Transaction UID (0008,1195) of the request it answers.
    calling_ae : str
        The AE title that sent it (the SCP, on an association it opened).
    event_type : int
        1: every instance committed; 2: some failed.
    committed : tuple of str
        SOP Instance UIDs in the Referenced SOP Sequence.
    failed : dict of str to int
        SOP Instance UID → Failure Reason (0008,1197) from the Failed SOP Sequence.
    """

    transaction_uid: str
    calling_ae: str
    event_type: int
    committed: tuple[str, ...]
    failed: dict[str, int]


def parse_report(event_type: int, info: Dataset, calling_ae: str = "") -> CommitmentReport:
    """The :class:`CommitmentReport` in an N-EVENT-REPORT's Event Information.

    Raises
    ------
    ValueError
        If it has no Transaction UID, an unknown Event Type ID, or an item without its
        Referenced SOP Instance UID.
    """
    if event_type not in (_EVENT_SUCCESS, _EVENT_FAILURES):
        raise ValueError(f"Event Type ID {event_type} is not a storage commitment result "
                         "(1 or 2)")
    transaction = str(info.get("TransactionUID", "") or "")
    if not transaction:
        raise ValueError("storage commitment report without a Transaction UID")
    committed, failed = _outcomes(info)
    return CommitmentReport(transaction, calling_ae, int(event_type), committed, failed)


def _outcomes(info: Dataset) -> tuple[tuple[str, ...], dict[str, int]]:
    """SOP Instance UIDs of the Referenced SOP Sequence, and Failure Reason by SOP Instance
    UID of the Failed SOP Sequence (0x0110 where an item has none)."""
    committed = tuple(str(i.ReferencedSOPInstanceUID)
                      for i in info.get("ReferencedSOPSequence", []))
    failed = {str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0x0110))
              for i in info.get("FailedSOPSequence", [])}
    return committed, failed


#: N-EVENT-REPORT statuses (PS3.7 Annex C, PS3.4 J.3.3.2 via N-EVENT-REPORT).
_PROCESSING_FAILURE, _NO_SUCH_EVENT_TYPE, _INVALID_ARGUMENT = 0x0110, 0x0113, 0x0115
_NO_SUCH_SOP_CLASS = 0x0118


def handle_report(event: Any, on_report: Any) -> tuple[int, None]:
    """pynetdicom EVT_N_EVENT_REPORT handler for reports on associations the SCP opened.

    ``on_report(CommitmentReport)`` records it; the report is acknowledged (0x0000) only
    when that returns, so an SCP that retries on failure sends it again.
    """
    req = event.request
    calling = str(getattr(event.assoc.requestor, "ae_title", "") or "").strip()
    if str(req.AffectedSOPClassUID) != STORAGE_COMMITMENT_PUSH_MODEL:
        logger.warning("N-EVENT-REPORT from %s for SOP class %s refused", calling,
                       req.AffectedSOPClassUID)
        return _NO_SUCH_SOP_CLASS, None
    try:
        report = parse_report(int(req.EventTypeID), event.event_information, calling)
    except ValueError as e:
        logger.warning("storage commitment report from %s refused: %s", calling, e)
        return (_NO_SUCH_EVENT_TYPE if "Event Type" in str(e) else _INVALID_ARGUMENT), None
    except Exception as e:
        logger.warning("unreadable storage commitment report from %s: %s: %s", calling,
                       type(e).__name__, e)
        return _INVALID_ARGUMENT, None
    try:
        on_report(report)
    except Exception:
        logger.exception("storage commitment report %s from %s could not be recorded",
                         report.transaction_uid, calling)
        return _PROCESSING_FAILURE, None
    logger.info("storage commitment report %s from %s on a new association: %d committed, "
                "%d failed", report.transaction_uid, calling, len(report.committed),
                len(report.failed))
    return 0x0000, None


def _request_dataset(transaction_uid: str, instances: Sequence[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    refs = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        refs.append(item)
    ds.ReferencedSOPSequence = refs
    return ds


class _ReportOnOurAssociation:
    """Takes our transaction's N-EVENT-REPORT on the requesting association and hands it
    to the waiting request only once our N-EVENT-REPORT-RSP is on the wire.

    pynetdicom serves an incoming N-EVENT-REPORT in a thread of its own and sends the
    response after the handler returns. Releasing as soon as the handler has run could put
    our A-RELEASE-RQ ahead of that response: pynetdicom then refuses to send it (Evt9 in
    Sta7, PS3.8 9.2), its DUL thread dies, the release waits out the ACSE timeout and the
    peer never hears that its report arrived. So the report is handed over from the
    notification that the response's P-DATA-TF PDU was sent (``EVT_PDU_SENT``, after
    ``EVT_DIMSE_SENT`` of the N-EVENT-REPORT-RSP).
    """

    def __init__(self, transaction_uid: str) -> None:
        self.transaction_uid = transaction_uid
        self.reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
        self._lock = threading.Lock()
        self._answered: tuple[int, Dataset] | None = None  # acknowledged, response not sent
        self._response_queued = False

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_N_EVENT_REPORT, self.on_report),
                (evt.EVT_DIMSE_SENT, self.on_dimse_sent), (evt.EVT_PDU_SENT, self.on_pdu_sent)]

    def on_report(self, event: Any) -> tuple[int, None]:
        """EVT_N_EVENT_REPORT: acknowledge the report of our transaction."""
        try:
            info = event.event_information
            if str(info.get("TransactionUID", "")) != self.transaction_uid:
                logger.warning("storage commitment report for an unknown transaction ignored")
                return 0x0000, None
            with self._lock:
                self._answered = (int(event.request.EventTypeID), info)
        except Exception:
            logger.exception("unreadable storage commitment report")
            return _PROCESSING_FAILURE, None
        return 0x0000, None

    def late(self, wait: float) -> tuple[int, Dataset] | None:
        """A report acknowledged just as the wait ended: its response goes out within
        ``wait`` seconds, then it is taken, not lost to the release. ``None`` if none."""
        with self._lock:
            answering = self._answered is not None
        if answering:
            try:
                return self.reports.get(timeout=wait)
            except queue.Empty:
                pass
        return None

    def on_dimse_sent(self, event: Any) -> None:
        """EVT_DIMSE_SENT: our N-EVENT-REPORT-RSP is being encoded and queued."""
        if isinstance(event.message, N_EVENT_REPORT_RSP):
            with self._lock:
                self._response_queued = self._answered is not None

    def on_pdu_sent(self, event: Any) -> None:
        """EVT_PDU_SENT: the response's P-DATA-TF has left; the request may now release."""
        if not isinstance(event.pdu, P_DATA_TF):
            return
        with self._lock:
            if self._response_queued and self._answered is not None:
                self.reports.put(self._answered)
                self._answered, self._response_queued = None, False


def _end(assoc: Any, peer: str) -> None:
    """Release ``assoc``; abort it if its DUL thread has died (a release would then wait
    for an answer that cannot come)."""
    if not assoc.is_established:
        return
    if assoc.dul.is_alive():
        assoc.release()
    else:
        logger.warning("the association to %s lost its network thread; aborting it", peer)
        assoc.abort()


def request_storage_commitment(
    instances: Sequence[tuple[str, str]],
    ae_title: str,
    host: str,
    port: int,
    calling_ae_title: str = "AMAGI",
    tls: ssl.SSLContext | None = None,
    timeout: float = 60.0,
    transaction_uid: str | None = None,
    tls_server_hostname: str | None = None,
    report_wait: float | None = None,
) -> list[CommitmentResult] | None:
    """Ask a peer to commit to storing ``instances`` and wait for its answer.

    Parameters
    ----------
    instances : sequence of (sop_class_uid, sop_instance_uid)
        The instances sent earlier.
    ae_title, host, port : str, str, int
        The Storage Commitment SCP (usually the PACS the instances went to).
    calling_ae_title : str
        Our AE title.
    tls : ssl.SSLContext, optional
        Client TLS context.
    timeout : float
        Seconds to wait for each network step and for the N-EVENT-REPORT.
    transaction_uid : str, optional
        Transaction UID (0008,1195); a fresh one by default.
    report_wait : float, optional
        Seconds to wait for the report on this association before releasing it and
        returning ``None``: the SCP then sends it on an association of its own to our
        listener. ``None``: wait ``timeout`` seconds and raise when no report came.

    Returns
    -------
    list of CommitmentResult or None
        One per instance, in order; ``None`` when ``report_wait`` passed without a report.

    Raises
    ------
    ValueError
        If ``instances`` is empty or holds an invalid UID.
    NetworkError
        If no association could be made, the N-ACTION failed, or no report arrived within
        ``timeout`` seconds.
    """
    if not instances:
        raise ValueError("instances must list at least one (sop_class_uid, sop_instance_uid)")
    for sop_class, sop_instance in instances:
        for uid, name in ((sop_class, "sop_class_uid"), (sop_instance, "sop_instance_uid")):
            ok, why = check_uid(uid, name)
            if not ok:
                raise ValueError(why)
    transaction_uid = transaction_uid or generate_uid()
    on_ours = _ReportOnOurAssociation(transaction_uid)
    ae = _make_ae(calling_ae_title, timeout, DEFAULT_MAX_PDU)
    # The association idles while the report is awaited. pynetdicom's idle timer would
    # abort it just as the wait ends, racing the release below (its reactor thread then
    # fails on an A-RELEASE in state Sta13); the wait itself bounds the idle time.
    ae.network_timeout = timeout + _IDLE_MARGIN_S
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    peer = peer_name(ae_title, host, port)
    assoc = _associate(ae, ae_title, host, port, DEFAULT_MAX_PDU, tls, tls_server_hostname,
                       evt_handlers=on_ours.handlers())
    try:
        if not assoc.is_established:
            raise NetworkError(f"{peer} does not support Storage Commitment Push Model")
        status, _ = assoc.send_n_action(_request_dataset(transaction_uid, instances),
                                        _REQUEST_COMMITMENT, STORAGE_COMMITMENT_PUSH_MODEL,
                                        STORAGE_COMMITMENT_INSTANCE)
        if "Status" not in status:
            raise NetworkError(f"no N-ACTION response from {peer} within {timeout} s")
        if int(status.Status) != 0:
            raise NetworkError(f"{peer} refused the commitment request "
                               f"(status 0x{int(status.Status):04X})")
        wait = timeout if report_wait is None else min(report_wait, timeout)
        got: tuple[int, Dataset] | None
        try:
            got = on_ours.reports.get(timeout=wait)
        except queue.Empty:
            got = on_ours.late(_RESPONSE_SEND_S)
        if got is None:
            if report_wait is not None:
                logger.info("storage commitment %s requested from %s; its report will come "
                            "on a new association", transaction_uid, peer)
                return None
            raise NetworkError(f"no storage commitment report from {peer} within "
                               f"{timeout} s (transaction {transaction_uid})")
    finally:
        _end(assoc, peer)
    event_type, info = got
    committed, failed = _outcomes(info)
    logger.info("storage commitment %s from %s: event type %d, %d committed, %d failed",
                transaction_uid, peer, event_type, len(committed), len(failed))
    listed = set(committed)
    return [CommitmentResult(c, i, i in listed and i not in failed, failed.get(i))
            for c, i in instances]
