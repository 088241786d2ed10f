"""DICOM TLS (PS3.15 B.1) on the listener and the sender, with throwaway certificates.

The CA, server and client certificates are made by the ``openssl`` CLI in the test's
temporary directory (elliptic-curve keys, one day validity).
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicom_io.errors import NetworkError
from dicom_io.net.scu import echo, send_instances
from dicom_io.net.tls import TLSConfigError, client_context, server_context
from dicom_io.tools import dcmtk_program
from tests.dicom_io._net_fixtures import (
    Recorder,
    dataset_part,
    make_video,
    pynetdicom_config,  # noqa: F401
    run,
    running_listener,
    spool_files,
)

pytestmark = [pytest.mark.usefixtures("pynetdicom_config")]


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _key_and_csr(d: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, csr = d / f"{name}.key", d / f"{name}.csr"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    return key, csr


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = d / "ca.key", d / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=Test CA")
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    server_key, server_csr = _key_and_csr(d, "server", "localhost")
    server_cert = d / "server.pem"
    _openssl("x509", "-req", "-in", server_csr, "-CA", ca, "-CAkey", ca_key,
             "-CAcreateserial", "-out", server_cert, "-days", "1", "-extfile", ext)
    client_key, client_csr = _key_and_csr(d, "client", "PACS")
    client_cert = d / "client.pem"
    _openssl("x509", "-req", "-in", client_csr, "-CA", ca, "-CAkey", ca_key,
             "-CAcreateserial", "-out", client_cert, "-days", "1")
    rogue_key, rogue_cert = d / "rogue.key", d / "rogue.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", rogue_key, "-out", rogue_cert, "-days", "1",
             "-subj", "/CN=PACS")
    return Certs(ca, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("tlsv") / "v.dcm")


@pytest.mark.integration
def test_tls_association_and_plaintext_refused(tmp_path: Path, certs: Certs,
                                               video: Path) -> None:
    rec = Recorder()
    tls = server_context(certs.server_cert, certs.server_key)
    client = client_context(certs.ca)
    with running_listener(tmp_path / "spool", rec, tls=tls) as listener:
        with pytest.raises(NetworkError, match="no association"):
            send_instances([video], "AMAGI", "127.0.0.1", listener.port, timeout=5)
        r = run([dcmtk_program("echoscu"), "-aec", "AMAGI", "-to", "5", "127.0.0.1", str(listener.port)])
        assert r.returncode != 0
        assert rec.stored == []
        # the listener survived both plaintext attempts
        [res] = send_instances([video], "AMAGI", "127.0.0.1", listener.port, tls=client)
        assert res.ok
        echo("AMAGI", "127.0.0.1", listener.port, tls=client)  # returns: Success
        r = run([dcmtk_program("echoscu"), "-aec", "AMAGI", "+tls", str(certs.client_key),
                 str(certs.client_cert), "+cf", str(certs.ca), "127.0.0.1",
                 str(listener.port)])
        assert r.returncode == 0, r.stderr  # DCMTK interoperates over TLS
    [inst] = rec.stored
    assert dataset_part(inst.path) == dataset_part(video)
    assert spool_files(tmp_path / "spool") == [inst.path]


def test_client_certificate_required(tmp_path: Path, certs: Certs, video: Path) -> None:
    rec = Recorder()
    tls = server_context(certs.server_cert, certs.server_key, ca_file=certs.ca,
                         require_client_cert=True)
    no_cert = client_context(certs.ca)
    rogue = client_context(certs.ca, certs.rogue_cert, certs.rogue_key)
    good = client_context(certs.ca, certs.client_cert, certs.client_key)
    with running_listener(tmp_path / "spool", rec, tls=tls) as listener:
        for ctx in (no_cert, rogue):
            with pytest.raises(NetworkError):
                send_instances([video], "AMAGI", "127.0.0.1", listener.port, tls=ctx,
                               timeout=5)
        assert rec.stored == []
        [res] = send_instances([video], "AMAGI", "127.0.0.1", listener.port, tls=good)
        assert res.ok
    assert len(rec.stored) == 1


def test_client_refuses_untrusted_server(tmp_path: Path, certs: Certs, video: Path) -> None:
    rec = Recorder()
    tls = server_context(certs.rogue_cert, certs.rogue_key)  # self-signed, not from our CA
    with running_listener(tmp_path / "spool", rec, tls=tls) as listener, \
            pytest.raises(NetworkError, match="TLS"):
        send_instances([video], "AMAGI", "127.0.0.1", listener.port,
                       tls=client_context(certs.ca), timeout=5)
    assert rec.stored == []


def test_silent_client_does_not_block_other_tls_associations(tmp_path: Path, certs: Certs,
                                                             video: Path) -> None:
    rec = Recorder()
    tls = server_context(certs.server_cert, certs.server_key)
    with running_listener(tmp_path / "spool", rec, tls=tls) as listener, \
            socket.create_connection(("127.0.0.1", listener.port)):
        time.sleep(0.2)  # the silent peer is accepted first and never starts a handshake
        start = time.monotonic()
        [res] = send_instances([video], "AMAGI", "127.0.0.1", listener.port,
                               tls=client_context(certs.ca), timeout=5)
        assert res.ok and time.monotonic() - start < 3


def test_tls_configuration_errors(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(TLSConfigError, match="does not exist"):
        server_context(tmp_path / "missing.pem", certs.server_key)
    with pytest.raises(TLSConfigError, match="needs ca_file"):
        server_context(certs.server_cert, certs.server_key, require_client_cert=True)
    with pytest.raises(TLSConfigError, match="cannot load"):
        server_context(certs.server_cert, certs.rogue_key)  # key does not match
    with pytest.raises(TLSConfigError, match="together"):
        client_context(certs.ca, cert_file=certs.client_cert)
