"""The PDU framing guard: a PDU longer than accepted is refused from its header, whatever
way the bytes are split across reads."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from dicom_io.net.pduguard import MAX_CONTROL_PDU, PduLimitedAccept, PduTooLargeError, pdu_limit


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def test_limits() -> None:
    assert pdu_limit(0x04, 16384) == 16384
    assert pdu_limit(0x04, 0) is None  # unlimited P-DATA as configured
    assert pdu_limit(0x01, 16384) == MAX_CONTROL_PDU
    assert pdu_limit(0x01, 4 * MAX_CONTROL_PDU) == 4 * MAX_CONTROL_PDU


def _guarded_pair(max_pdu: int) -> tuple[socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    return PduLimitedAccept(max_pdu).wrap_socket(accepted), client


@pytest.mark.parametrize("chunk", [1, 5, 7, 4096])
def test_stream_within_limits_passes_then_oversized_header_refused(chunk, caplog) -> None:
    guarded, client = _guarded_pair(max_pdu=1000)
    good = _pdu(0x01, b"a" * 300) + _pdu(0x04, b"p" * 1000) + _pdu(0x05, b"r" * 4)
    bad = struct.pack(">BBL", 0x04, 0, 1001) + b"x" * 1001
    threading.Thread(target=client.sendall, args=(good + bad,), daemon=True).start()
    got = bytearray()
    with guarded, client:
        while len(got) < len(good):
            got += guarded.recv(min(chunk, len(good) - len(got)))
        assert bytes(got) == good
        with caplog.at_level("WARNING", logger="dicom_io"), \
                pytest.raises(PduTooLargeError, match="P-DATA-TF PDU of 1001 bytes exceeds 1000"):
            for _ in range(6):  # the header, split or not, is enough to refuse
                guarded.recv(chunk)
    assert "announced a P-DATA-TF PDU of 1001 bytes, more than the 1000 accepted" in caplog.text


def test_guarded_socket_keeps_the_timeout() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    accepted.settimeout(7.5)
    guarded = PduLimitedAccept(0).wrap_socket(accepted)
    assert guarded.gettimeout() == 7.5
    for sock in (guarded, client, server):
        sock.close()
