"""Storage Commitment SCU against a pynetdicom Storage Commitment SCP on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from dicom_io.errors import NetworkError
from dicom_io.net.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    request_storage_commitment,
)
from dicom_io.sopclasses import COMPREHENSIVE_3D_SR, SEGMENTATION
from tests.dicom_io._net_fixtures import Recorder, running_listener, send_commitment_report


@pytest.fixture
def commitment_scp() -> Iterator[tuple[int, set[str], dict[str, bool]]]:
    """A Storage Commitment SCP committing the instances in ``known``.

    ``behaviour["silent"] = True`` makes it answer the N-ACTION but never report.
    """
    known: set[str] = set()
    behaviour = {"silent": False}

    def on_action(event: Any) -> tuple[int, None]:
        request = event.action_information
        if not behaviour["silent"]:
            threading.Thread(target=send_commitment_report, args=(event.assoc, request, known),
                             daemon=True).start()
        return 0x0000, None

    ae = AE("COMMITSCP")
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_N_ACTION, on_action)])
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


def test_commitment_timeout_raises(commitment_scp: tuple[int, set[str], dict]) -> None:
    port, _, behaviour = commitment_scp
    behaviour["silent"] = True
    start = time.monotonic()
    with pytest.raises(NetworkError, match="no storage commitment report"):
        request_storage_commitment([(SEGMENTATION, generate_uid())], "COMMITSCP",
                                   "127.0.0.1", port, timeout=1)
    assert time.monotonic() - start < 4


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
