"""Refuse an oversized PDU from its 6-byte header, before its body is read or buffered.

pynetdicom reads a PDU's header and then ``recv(length)`` bytes into memory, whatever the
length (an A-ASSOCIATE-RQ may announce 4 GiB before any AE title is checked). The listener
therefore hands pynetdicom accepted sockets whose ``recv`` follows the PDU framing (PS3.8
§9.3: type, reserved byte, 32-bit big-endian length) and, when a header announces more than
the limit, logs it and raises :class:`OSError`: pynetdicom then closes the connection
(state machine event 17) having buffered nothing of the body.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from typing import Any

logger = logging.getLogger(__name__)

#: P-DATA-TF (PS3.8 §9.3.5): the only PDU whose length the negotiated maximum bounds.
P_DATA_TF = 0x04
#: Largest non-P-DATA PDU accepted (bytes): association, release and abort PDUs are small;
#: a request with every presentation context and a large user identity stays far below it.
MAX_CONTROL_PDU = 1 << 20

_PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ",
              0x04: "P-DATA-TF", 0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}


class PduTooLargeError(OSError):
    """A peer announced a PDU longer than the listener accepts."""


def pdu_limit(pdu_type: int, max_pdu: int) -> int | None:
    """Largest length (bytes after the 6-byte header) accepted for a PDU of ``pdu_type``.

    ``max_pdu`` is the listener's Maximum Length Received (0 = unlimited, which leaves
    P-DATA-TF unbounded but still bounds the other PDUs by :data:`MAX_CONTROL_PDU`).
    """
    if pdu_type == P_DATA_TF:
        return max_pdu or None
    return max(MAX_CONTROL_PDU, max_pdu)


class _Framing:
    """Follows the PDU boundaries of everything ``recv`` returned on one connection."""

    def __init__(self, max_pdu: int, peer: str) -> None:
        self.max_pdu = max_pdu
        self.peer = peer
        self.header = bytearray()
        self.remaining = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                self.remaining -= take
                i += take
                continue
            take = min(6 - len(self.header), n - i)
            self.header += data[i:i + take]
            i += take
            if len(self.header) == 6:
                pdu_type, _, length = struct.unpack(">BBL", self.header)
                self.header.clear()
                limit = pdu_limit(pdu_type, self.max_pdu)
                if limit is not None and length > limit:
                    name = _PDU_NAMES.get(pdu_type, f"type 0x{pdu_type:02X}")
                    logger.warning("connection from %s closed: it announced a %s PDU of %d "
                                   "bytes, more than the %d accepted", self.peer, name,
                                   length, limit)
                    raise PduTooLargeError(f"{name} PDU of {length} bytes exceeds {limit}")
                self.remaining = length


class _GuardedSocket(socket.socket):
    _framing: _Framing

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self._framing.feed(data)
        return data


class _GuardedSSLSocket(ssl.SSLSocket):
    _framing: _Framing

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data = super().recv(buflen, flags)
        self._framing.feed(data)
        return data


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "an unknown peer"


class PduLimitedAccept:
    """What the listener passes to pynetdicom as its ``ssl_context``: pynetdicom only calls
    ``wrap_socket`` on it for each accepted socket. The socket comes back guarded (see the
    module docstring), wrapped in TLS first when ``tls`` is given.

    Parameters
    ----------
    max_pdu : int
        The listener's Maximum Length Received (bytes, 0 = unlimited P-DATA).
    tls : object with ``wrap_socket(sock, server_side=True)``, optional
        E.g. :class:`dicom_io.net.tls.DeferredHandshake`; ``None`` for plaintext.
    timeout : float or None
        Socket timeout (s) of a plaintext connection (TLS sets its own).
    """

    def __init__(self, max_pdu: int, tls: Any | None = None, timeout: float | None = None
                 ) -> None:
        if max_pdu < 0:
            raise ValueError(f"max_pdu must be >= 0, got {max_pdu}")
        self.max_pdu = max_pdu
        self.tls = tls
        self.timeout = timeout

    def wrap_socket(self, sock: socket.socket, server_side: bool = True,
                    **_ignored: object) -> socket.socket:
        framing = _Framing(self.max_pdu, _peer(sock))
        if self.tls is not None:
            wrapped = self.tls.wrap_socket(sock, server_side=True)
            wrapped.__class__ = _GuardedSSLSocket
            wrapped._framing = framing
            return wrapped
        timeout = sock.gettimeout()
        guarded = _GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        guarded.settimeout(timeout if timeout is not None else self.timeout)
        guarded._framing = framing
        return guarded
