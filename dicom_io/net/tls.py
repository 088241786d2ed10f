"""TLS contexts for DICOM associations (PS3.15 Annex B.1, "Basic TLS Secure Transport").

Certificates and keys are PEM files named in the configuration; nothing is generated here.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

from dicom_io.errors import DicomIOError

_MIN_VERSION = ssl.TLSVersion.TLSv1_2


class TLSConfigError(DicomIOError):
    """A certificate, key or CA file is missing or unusable."""


def _existing(path: str | os.PathLike[str], what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise TLSConfigError(f"{what} {p} does not exist or is not a file")
    return str(p)


def server_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    ca_file: str | os.PathLike[str] | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """The listener's TLS context.

    Parameters
    ----------
    cert_file, key_file : path
        Our certificate (chain) and private key, PEM.
    ca_file : path, optional
        CA bundle used to verify client certificates.
    require_client_cert : bool
        Refuse the handshake unless the client presents a certificate signed by ``ca_file``
        (mutual TLS). Requires ``ca_file``.

    Returns
    -------
    ssl.SSLContext
        TLS 1.2 or later, server side.

    Raises
    ------
    TLSConfigError
        If a file is missing, unreadable, or the key does not match the certificate.
    """
    if require_client_cert and ca_file is None:
        raise TLSConfigError("require_client_cert needs ca_file to verify client certificates")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSION
    try:
        ctx.load_cert_chain(_existing(cert_file, "certificate"), _existing(key_file, "key"))
        if ca_file is not None:
            ctx.load_verify_locations(cafile=_existing(ca_file, "CA file"))
    except ssl.SSLError as e:
        raise TLSConfigError(f"cannot load TLS certificate/key: {e.reason or e}") from e
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif ca_file is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """The TLS context for outbound associations (SCU side).

    Parameters
    ----------
    ca_file : path, optional
        CA bundle to verify the peer; the system store when omitted.
    cert_file, key_file : path, optional
        Our client certificate and key, for peers that require one.
    check_hostname : bool
        Check that the peer certificate names the host we connect to.

    Returns
    -------
    ssl.SSLContext
        TLS 1.2 or later, client side, peer certificate always verified.

    Raises
    ------
    TLSConfigError
        If a file is missing or unusable, or only one of cert/key is given.
    """
    if (cert_file is None) != (key_file is None):
        raise TLSConfigError("cert_file and key_file must be given together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _MIN_VERSION
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        if ca_file is not None:
            ctx.load_verify_locations(cafile=_existing(ca_file, "CA file"))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if cert_file is not None and key_file is not None:
            ctx.load_cert_chain(_existing(cert_file, "certificate"), _existing(key_file, "key"))
    except ssl.SSLError as e:
        raise TLSConfigError(f"cannot load TLS certificate/key: {e.reason or e}") from e
    return ctx


class DeferredHandshake:
    """Give pynetdicom's server a context whose handshake runs in the association thread.

    pynetdicom wraps each accepted socket in its single accept thread; with the default
    ``do_handshake_on_connect=True`` one peer that connects and stays silent would block
    every other connection. This adapter wraps with ``do_handshake_on_connect=False`` (the
    handshake then happens on the first read, in the association's own thread) and gives the
    socket a timeout so a stalled handshake ends with a closed connection.

    Parameters
    ----------
    context : ssl.SSLContext
        The server context (see :func:`server_context`).
    timeout : float or None
        Socket timeout in seconds for the accepted connection.
    """

    def __init__(self, context: ssl.SSLContext, timeout: float | None) -> None:
        self.context = context
        self.timeout = timeout

    def wrap_socket(self, sock: socket.socket, server_side: bool = True,
                    **_ignored: object) -> ssl.SSLSocket:
        """Wrap an accepted socket without handshaking yet (server side)."""
        sock.settimeout(self.timeout)
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
