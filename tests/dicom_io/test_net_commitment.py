"""Storage Commitment SCU against a pynetdicom Storage Commitment SCP and Orthanc on loopback;
reports on the requesting association and on one the SCP opens to the listener."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt

from dicom_io.errors import NetworkError
from dicom_io.net.commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentReport,
    request_storage_commitment,
)
from dicom_io.sopclasses import COMPREHENSIVE_3D_SR, SEGMENTATION
from tests.dicom_io._net_fixtures import Recorder, running_listener, send_commitment_report


@pytest.fixture
def commitment_scp() -> Iterator[tuple[int, set[str], dict[str, Any]]]:
    """A Storage Commitment SCP committing the instances in ``known``.

    ``behaviour["silent"] = True`` makes it answer the N-ACTION but never report;
    ``behaviour["answers"]`` lists the status our side answered each report with.
    """
    known: set[str] = set()
    behaviour: dict[str, Any] = {"silent": False, "ended": [], "answers": []}

    def report(assoc: Any, request: Dataset) -> None:
        behaviour["answers"].append(send_commitment_report(assoc, request, known))

    def on_action(event: Any) -> tuple[int, None]:
        request = event.action_information
        if not behaviour["silent"]:
            threading.Thread(target=report, args=(event.assoc, request), daemon=True).start()
        return 0x0000, None

    ae = AE("COMMITSCP")
    ae.dimse_timeout = 5  # for our answer to its report
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_N_ACTION, on_action),
                                           (evt.EVT_RELEASED,
                                            lambda e: behaviour["ended"].append("released")),
                                           (evt.EVT_ABORTED,
                                            lambda e: behaviour["ended"].append("aborted"))])
    try:
        yield server.server_address[1], known, behaviour
    finally:
        server.shutdown()


def test_commitment_success_and_failure(commitment_scp: tuple[int, set[str], dict]) -> None:
    port, known, _ = commitment_scp
    a, b = generate_uid(), generate_uid()
    known.add(a)
    results = request_storage_commitment([(COMPREHENSIVE_3D_SR, a), (SEGMENTATION, b)],
                                         "COMMITSCP", "127.0.0.1", port, timeout=5)
    assert [(r.sop_instance_uid, r.committed, r.failure_reason) for r in results] == [
        (a, True, None), (b, False, 0x0112)]
    assert results[1].sop_class_uid == SEGMENTATION


@pytest.mark.parametrize("report_wait", [None, 0.3])
def test_report_is_answered_before_the_association_is_released(
        commitment_scp: tuple[int, set[str], dict], monkeypatch: pytest.MonkeyPatch,
        report_wait: float | None) -> None:
    """pynetdicom answers an N-EVENT-REPORT from a thread of its own, after our handler has
    run. On a busy machine that thread can be late; releasing as soon as the report was
    handled then put our A-RELEASE-RQ ahead of the answer (pynetdicom: Evt9 in Sta7), the
    association's network thread died and the peer never got its answer. Here the answer
    is made 0.5 s late every time; with a 0.3 s ``report_wait`` the report (sent after
    0.1 s) was acknowledged before the wait ended, so it is still taken, not dropped."""
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dimse_primitives import N_EVENT_REPORT

    send_msg = DIMSEServiceProvider.send_msg

    def late_answer(self: Any, primitive: Any, context_id: int) -> None:
        if isinstance(primitive, N_EVENT_REPORT) and primitive.MessageIDBeingRespondedTo:
            time.sleep(0.5)
        send_msg(self, primitive, context_id)

    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", late_answer)
    port, known, behaviour = commitment_scp
    uid = generate_uid()
    known.add(uid)
    start = time.monotonic()
    (result,) = request_storage_commitment([(SEGMENTATION, uid)], "COMMITSCP", "127.0.0.1",
                                           port, timeout=5, report_wait=report_wait)
    assert result.committed and time.monotonic() - start < 3
    deadline = time.monotonic() + 3
    while not behaviour["ended"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert behaviour["answers"] == [0x0000]  # the peer heard that its report arrived
    assert behaviour["ended"] == ["released"]


def test_commitment_timeout_raises(commitment_scp: tuple[int, set[str], dict]) -> None:
    port, _, behaviour = commitment_scp
    behaviour["silent"] = True
    start = time.monotonic()
    with pytest.raises(NetworkError, match="no storage commitment report"):
        request_storage_commitment([(SEGMENTATION, generate_uid())], "COMMITSCP",
                                   "127.0.0.1", port, timeout=1)
    assert time.monotonic() - start < 4
    # released in order, not aborted by the idle timer racing the release
    deadline = time.monotonic() + 3
    while not behaviour["ended"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert behaviour["ended"] == ["released"]


def test_commitment_unsupported_by_peer(tmp_path: Any) -> None:
    with running_listener(tmp_path / "spool", Recorder()) as listener, \
            pytest.raises(NetworkError, match="does not support Storage Commitment"):
        request_storage_commitment([(SEGMENTATION, generate_uid())], "AMAGI", "127.0.0.1",
                                   listener.port, timeout=5)


def test_commitment_argument_validation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        request_storage_commitment([], "X", "127.0.0.1", 1)
    with pytest.raises(ValueError, match="sop_instance_uid"):
        request_storage_commitment([(SEGMENTATION, "1.02")], "X", "127.0.0.1", 1)


def _report_on_new_association(port: int, info: Dataset, event_type: int = 1,
                               calling_ae: str = "COMMITSCP", role: bool = True) -> int | None:
    """As a PACS: open an association to ``port`` as the Storage Commitment SCP (role
    selection) and send the N-EVENT-REPORT; the status it got, None if not accepted."""
    ae = AE(calling_ae)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    ext = [build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)] if role else []
    assoc = ae.associate("127.0.0.1", port, ae_title="AMAGI", ext_neg=ext)
    if not assoc.is_established:
        return None
    try:
        if not assoc.accepted_contexts:
            return None
        status, _ = assoc.send_n_event_report(info, event_type, STORAGE_COMMITMENT_PUSH_MODEL,
                                              STORAGE_COMMITMENT_INSTANCE)
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def _report(transaction: str, committed: list[str], failed: dict[str, int]) -> Dataset:
    info = Dataset()
    if transaction:
        info.TransactionUID = transaction
    refs = []
    for uid in committed:
        item = Dataset()
        item.ReferencedSOPClassUID = SEGMENTATION
        item.ReferencedSOPInstanceUID = uid
        refs.append(item)
    if refs:
        info.ReferencedSOPSequence = refs
    fails = []
    for uid, reason in failed.items():
        item = Dataset()
        item.ReferencedSOPClassUID = SEGMENTATION
        item.ReferencedSOPInstanceUID = uid
        item.FailureReason = reason
        fails.append(item)
    if fails:
        info.FailedSOPSequence = fails
    return info


def test_report_on_a_new_association_reaches_the_listener(tmp_path: Any) -> None:
    reports: list[CommitmentReport] = []
    fail = {"on": False}

    def on_report(report: CommitmentReport) -> None:
        if fail["on"]:
            raise RuntimeError("database locked")
        reports.append(report)

    tx, a, b = generate_uid(), generate_uid(), generate_uid()
    with running_listener(tmp_path / "spool", Recorder(),
                          on_commitment_report=on_report) as listener:
        port = listener.port
        assert _report_on_new_association(port, _report(tx, [a], {b: 0x0112}), 2) == 0x0000
        assert reports == [CommitmentReport(tx, "COMMITSCP", 2, (a,), {b: 0x0112})]
        # Not recorded: not acknowledged, so the PACS can send it again.
        fail["on"] = True
        assert _report_on_new_association(port, _report(tx, [a], {}), 1) == 0x0110
        fail["on"] = False
        assert _report_on_new_association(port, _report(tx, [a], {}), 7) == 0x0113
        assert _report_on_new_association(port, _report("", [a], {}), 1) == 0x0115
        assert len(reports) == 1
    # Without a callback the listener does not take part in Storage Commitment at all.
    with running_listener(tmp_path / "spool2", Recorder()) as listener:
        assert _report_on_new_association(listener.port, _report(tx, [a], {}), 1) is None


def test_request_returns_none_when_the_report_comes_later(
        commitment_scp: tuple[int, set[str], dict]) -> None:
    port, _, behaviour = commitment_scp
    behaviour["silent"] = True
    start = time.monotonic()
    assert request_storage_commitment([(SEGMENTATION, generate_uid())], "COMMITSCP",
                                      "127.0.0.1", port, timeout=5, report_wait=0.5) is None
    assert time.monotonic() - start < 3
    # A report that does come on the same association is still taken at once.
    behaviour["silent"] = False
    uid = generate_uid()
    (result,) = request_storage_commitment([(SEGMENTATION, uid)], "COMMITSCP", "127.0.0.1",
                                           port, timeout=5, report_wait=3)
    assert (result.sop_instance_uid, result.committed, result.failure_reason) == (
        uid, False, 0x0112)


@pytest.mark.integration
def test_orthanc_reports_on_a_new_association(tmp_path: Any) -> None:
    """Debian's Orthanc as the SCP: the report of a stored and an unknown instance arrives
    at the listener on Orthanc's own association."""
    from dicom_io.net.scu import send_instances
    from tests.amagi_plugin.serve_support import Orthanc, running, wait_until
    from tests.dicom_io._net_fixtures import make_sr

    reports: list[CommitmentReport] = []
    sr = make_sr(tmp_path / "sr.dcm")
    ds = pydicom.dcmread(sr)
    stored_class, stored_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    unknown = generate_uid()
    with running_listener(tmp_path / "spool", Recorder(),
                          on_commitment_report=reports.append) as listener, \
            running(Orthanc(tmp_path / "orthanc", listener.port)) as orthanc:
        (sent,) = send_instances([sr], orthanc.ae_title, "127.0.0.1", orthanc.dicom_port)
        assert sent.ok, sent.error
        tx = generate_uid()
        answer = request_storage_commitment(
            [(stored_class, stored_uid), (SEGMENTATION, unknown)], orthanc.ae_title,
            "127.0.0.1", orthanc.dicom_port, timeout=10, transaction_uid=tx, report_wait=0.5)
        (report,) = wait_until(lambda: list(reports), 30, what="Orthanc's report")
        # Orthanc never answers on the requesting association.
        assert answer is None
    assert report == CommitmentReport(tx, "ORTHANC", 2, (stored_uid,), {unknown: 0x0112})
