"""STOW-RS delivery (dicom_io.net.stow) against Orthanc's DICOMweb plugin and a local HTTP
server that answers what each test needs (errors, silence, partial success), on loopback."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from dicom_io.errors import NetworkError
from dicom_io.net.stow import WebAuth, store_instances
from tests.amagi_plugin.serve_support import Orthanc, free_port, running
from tests.amagi_plugin.serve_support import make_video as serve_make_video
from tests.dicom_io._net_fixtures import make_sr, make_video
from tests.dicom_io._web_fixtures import FlakyDicomweb
from tests.dicom_io.test_net_tls import Certs, certs  # noqa: F401 - the module's PKI fixture


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("stow")
    return [make_sr(d / "sr.dcm"), make_video(d / "video.dcm")]


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _qido(orthanc: Orthanc, user: str, password: str, query: str) -> list[dict]:
    """QIDO-RS straight to Orthanc (urllib, not the code under test)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"{orthanc.dicomweb_url}/{query}",
                                 headers={"Authorization": f"Basic {token}",
                                          "Accept": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body.strip() else []


@pytest.mark.integration
def test_stow_into_orthanc_with_basic_auth(tmp_path: Path, files: list[Path]) -> None:
    users = {"amagi": "s3cret-pw"}
    with running(Orthanc(tmp_path / "orthanc", free_port(), dicomweb=True, users=users)) as o:
        # Wrong and missing credentials: refused for good (401), with nothing stored.
        for auth in (WebAuth("amagi", "wrong"), None):
            refused = store_instances(files, o.dicomweb_url, auth=auth)
            assert [(r.ok, r.rejected, r.status) for r in refused] == [(False, True, 401)] * 2
            assert all("HTTP 401 Unauthorized" in (r.error or "") for r in refused)
            assert "WWW-Authenticate: Basic" in (refused[0].error or "")
        assert o.get("/instances") == []

        # Over 1 MB: the client streams the request with chunked transfer encoding.
        big = serve_make_video(tmp_path / "big.dcm", seconds=0.5, size=(480, 640))
        assert big.stat().st_size > 1 << 20
        sent = [*files, big]
        results = store_instances(sent, o.dicomweb_url, auth=WebAuth("amagi", "s3cret-pw"))
        assert [r.ok for r in results] == [True] * 3, [r.error for r in results]
        assert [r.sop_instance_uid for r in results] == [_uid(f) for f in sent]
        for f in sent:
            src = pydicom.dcmread(f)
            found = _qido(o, "amagi", "s3cret-pw",
                          f"studies/{src.StudyInstanceUID}/instances?SOPInstanceUID="
                          f"{src.SOPInstanceUID}")
            assert len(found) == 1, f
            (oid,) = o.post("/tools/lookup", str(src.SOPInstanceUID).encode())
            # The data set Orthanc keeps is the one on disk, element for element.
            req = urllib.request.Request(
                f"http://127.0.0.1:{o.http_port}/instances/{oid['ID']}/file",
                headers=o._headers())
            with urllib.request.urlopen(req, timeout=30) as r:
                stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(r.read()))
            assert stored == src


def test_transient_failures_raise_network_error(files: list[Path]) -> None:
    with running(FlakyDicomweb()) as web:
        web.plan = [("status", 503, "text/plain", "maintenance until 10:00"),
                    ("status", 502, "text/html", "<html><body>Bad Gateway</body></html>"),
                    ("status", 429, "application/json", '{"message": "slow down"}'),
                    ("status", 408, "text/plain", "")]
        for expected in ("HTTP 503 Service Unavailable", "HTTP 502 Bad Gateway",
                         "HTTP 429 Too Many Requests", "HTTP 408 Request Timeout"):
            with pytest.raises(NetworkError, match=expected) as e:
                store_instances(files, web.url)
            assert web.url in str(e.value)
        assert "maintenance until 10:00" in _first_error(files, web, 503, "maintenance until 10:00")
        # One attempt per call: the client library's own retries are off.
        assert len(web.requests) == 5

        web.plan = [("hang", 3.0)]
        t0 = time.monotonic()
        with pytest.raises(NetworkError, match=r"no answer within 0\.5 s"):
            store_instances(files, web.url, timeout=0.5)
        assert time.monotonic() - t0 < 2.5
        assert not web.stored
        # After the failures, the same call succeeds.
        assert [r.ok for r in store_instances(files, web.url)] == [True, True]
        assert set(web.stored) == {_uid(f) for f in files}

    with pytest.raises(NetworkError, match=r"cannot connect: .*Connection refused"):
        store_instances(files, f"http://127.0.0.1:{free_port()}/dicom-web")


def _first_error(files: list[Path], web: FlakyDicomweb, code: int, body: str) -> str:
    web.plan = [("status", code, "text/plain", body)]
    with pytest.raises(NetworkError) as e:
        store_instances(files, web.url)
    return str(e.value)


def test_client_errors_are_rejections_with_the_server_reason(files: list[Path]) -> None:
    video_uid = _uid(files[1])
    failed = pydicom.Dataset()
    item = pydicom.Dataset()
    item.ReferencedSOPInstanceUID = video_uid
    item.FailureReason = 0xC000
    failed.FailedSOPSequence = [item]
    with running(FlakyDicomweb()) as web:
        web.plan = [
            ("status", 400, "text/plain", "Bad Request: the SOP class is not accepted here"),
            ("status", 409, "application/dicom+json", json.dumps(failed.to_json_dict())),
            ("status", 403, "application/json",
             '{"HttpError": "Forbidden", "Message": "user amagi may not store"}'),
            ("status", 501, "text/plain", "STOW-RS is not implemented here"),
        ]
        plain = store_instances(files, web.url)
        assert [(r.ok, r.rejected, r.status) for r in plain] == [(False, True, 400)] * 2
        assert plain[0].error == (f"HTTP 400 Bad Request from {web.url}: Bad Request: the SOP "
                                  "class is not accepted here")
        dicom_json = store_instances(files, web.url)
        assert all(r.rejected and "HTTP 409 Conflict" in (r.error or "") for r in dicom_json)
        assert f"{video_uid}: Failure Reason 0xC000" in (dicom_json[0].error or "")
        orthanc_like = store_instances(files, web.url)
        assert all(r.rejected for r in orthanc_like)
        assert orthanc_like[1].error == f"HTTP 403 Forbidden from {web.url}: user amagi may not store"
        # 501: no retry will make a server implement STOW-RS, so it is a rejection too.
        unimplemented = store_instances(files, web.url)
        assert [(r.rejected, r.status) for r in unimplemented] == [(True, 501)] * 2
        assert unimplemented[0].error == (f"HTTP 501 Not Implemented from {web.url}: STOW-RS is "
                                          "not implemented here")
        assert not web.stored


def test_partial_success_fails_only_the_listed_instances(files: list[Path]) -> None:
    sr_uid, video_uid = (_uid(f) for f in files)
    rsp = pydicom.Dataset()
    ok, bad = pydicom.Dataset(), pydicom.Dataset()
    ok.ReferencedSOPInstanceUID = sr_uid
    bad.ReferencedSOPInstanceUID = video_uid
    bad.FailureReason = 0xA700
    rsp.ReferencedSOPSequence = [ok]
    rsp.FailedSOPSequence = [bad]
    with running(FlakyDicomweb()) as web:
        web.plan = [("status", 202, "application/dicom+json", json.dumps(rsp.to_json_dict()))]
        sr, video = store_instances(files, web.url)
    assert sr.ok and sr.error is None
    assert not video.ok and not video.rejected  # retried later, as a DIMSE failure status
    assert video.error == f"{web.url} did not store it: Failure Reason 0xA700 Out of Resources"


def test_bearer_token_and_unreadable_file(tmp_path: Path, files: list[Path]) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not DICOM at all")
    with running(FlakyDicomweb()) as web:
        results = store_instances([files[0], junk, tmp_path / "gone.dcm"], web.url,
                                  auth=WebAuth(token="tok-123"))
    assert results[0].ok
    assert not results[1].ok and "cannot read" in (results[1].error or "")
    assert not results[2].ok and "cannot read" in (results[2].error or "")
    (req,) = web.requests
    assert req["headers"]["Authorization"] == "Bearer tok-123"
    assert req["path"] == "/dicom-web/studies"
    assert "tok-123" not in repr(WebAuth(token="tok-123"))


def test_https_verified_with_the_configured_ca(certs: Certs, files: list[Path]) -> None:  # noqa: F811
    web = FlakyDicomweb()
    web.start(tls=(str(certs.server_cert), str(certs.server_key)))
    try:
        assert web.url.startswith("https://")
        # Not in the system's trust store: refused, and retried later (not a rejection).
        with pytest.raises(NetworkError, match=r"TLS handshake failed.*certificate verify failed"):
            store_instances(files, web.url)
        # A CA that did not sign the server's certificate: refused too.
        with pytest.raises(NetworkError, match="certificate verify failed"):
            store_instances(files, web.url, ca_file=str(certs.rogue_cert))
        assert not web.stored
        results = store_instances(files, web.url, ca_file=str(certs.ca))
        assert [r.ok for r in results] == [True, True]
        with pytest.raises(NetworkError, match=r"CA bundle .*missing\.pem does not exist"):
            store_instances(files, web.url, ca_file=str(certs.ca.parent / "missing.pem"))
    finally:
        web.stop()
