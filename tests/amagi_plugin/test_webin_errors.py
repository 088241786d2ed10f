"""QIDO-RS and WADO-RS against a local HTTP server that answers what each test plans: the
error mapping (5xx and timeouts transient, 4xx a refusal with the server's reason), nothing
partial left by a failed retrieval, filters a server ignores, and authentication."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from amagi_plugin.errors import ConfigError, InputError
from amagi_plugin.webin import WebOptions, parse_study_url, web_source
from dicom_io.errors import InvalidInstanceError, NetworkError
from dicom_io.net.web import WebRefusedError
from dicom_io.net.webin import WebInstance, WebSource, find_video_instances, retrieve_instance
from dicom_io.sopclasses import COMPREHENSIVE_SR, VIDEO_ENDOSCOPIC
from tests.amagi_plugin.serve_support import make_video

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


class Web:
    """Answers GETs from ``plan`` (one step per request, then ``then``): ``("status", code,
    body)``, ``("hang", s)``, ``("json", doc)``, ``("dicom", bytes, cut)``: a multipart WADO-RS
    answer of that PS3.10 file, cut after ``cut`` bytes of it when ``cut`` is not None."""

    def __init__(self) -> None:
        self.plan: list[tuple] = []
        self.then: tuple = ("status", 500, "no plan")
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append({"path": self.path, "headers": dict(self.headers)})
                step = owner.plan.pop(0) if owner.plan else owner.then
                kind = step[0]
                if kind == "hang":
                    time.sleep(step[1])
                    self.close_connection = True
                    return
                if kind == "status":
                    body, ctype = step[2].encode(), "text/plain"
                    self.send_response(step[1])
                elif kind == "json":
                    body, ctype = json.dumps(step[1]).encode(), "application/dicom+json"
                    self.send_response(200)
                else:
                    boundary = uuid.uuid4().hex
                    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                            + step[1] + f"\r\n--{boundary}--\r\n".encode())
                    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
                    self.send_response(200)
                    if step[2] is not None:  # promise the whole body, send a part, hang up
                        self.send_header("Content-Type", ctype)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body[:step[2]])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def web():
    w = Web()
    yield w
    w.close()


def _qido(sop_class: str, sop: str = SOP) -> dict:
    ds = pydicom.Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, SERIES, sop
    ds.SOPClassUID, ds.NumberOfFrames, ds.StudyDate = sop_class, 15, "20260101"
    return ds.to_json_dict()


def test_qido_5xx_is_transient_with_the_servers_words(web) -> None:
    web.then = ("status", 503, "archive busy, try later")
    with pytest.raises(NetworkError) as e:
        find_video_instances(WebSource(web.url))
    assert str(e.value) == (f"QIDO-RS: HTTP 503 Service Unavailable from {web.url}: "
                            "archive busy, try later")
    assert len(web.requests) == 1  # one attempt: retries belong to the caller


def test_qido_timeout_is_transient(web) -> None:
    web.then = ("hang", 3.0)
    with pytest.raises(NetworkError, match=r"QIDO-RS to .* no answer within 0.5 s"):
        find_video_instances(WebSource(web.url, timeout=0.5))


def test_qido_4xx_is_a_refusal_with_the_reason(web) -> None:
    web.then = ("status", 400, "unsupported attribute SOPClassUID")
    with pytest.raises(WebRefusedError) as e:
        find_video_instances(WebSource(web.url), study_instance_uid=STUDY)
    assert e.value.status == 400
    assert "HTTP 400 Bad Request" in str(e.value) and "unsupported attribute" in str(e.value)


def test_qido_asks_per_video_class_and_keeps_only_videos(web) -> None:
    # A server that ignores the SOPClassUID filter answers everything to every query.
    web.then = ("json", [_qido(VIDEO_ENDOSCOPIC), _qido(COMPREHENSIVE_SR, sop="1.2.3.4.6")])
    found = find_video_instances(WebSource(web.url), study_instance_uid=STUDY,
                                 study_date_from="20250101")
    assert found == [WebInstance(STUDY, SERIES, SOP, VIDEO_ENDOSCOPIC, "20260101", 15)]
    paths = sorted(r["path"] for r in web.requests)
    assert len(paths) == 3 and all(p.startswith(f"/dicom-web/studies/{STUDY}/instances?")
                                   for p in paths)
    assert all("StudyDate=20250101-" in p for p in paths)
    assert {p.split("SOPClassUID=")[1].split("&")[0] for p in paths} == {
        "1.2.840.10008.5.1.4.1.1.77.1.1.1", "1.2.840.10008.5.1.4.1.1.77.1.2.1",
        "1.2.840.10008.5.1.4.1.1.77.1.4.1"}


def _inst(path: Path) -> WebInstance:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return WebInstance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                       ds.SOPClassUID)


def test_wado_retrieves_the_instance_as_stored(web, tmp_path) -> None:
    video = make_video(tmp_path / "v.dcm", seconds=0.2)
    web.then = ("dicom", video.read_bytes(), None)
    dest = tmp_path / "got" / "x.dcm"
    assert retrieve_instance(WebSource(web.url), _inst(video), dest) == dest
    got, src = pydicom.dcmread(dest), pydicom.dcmread(video)
    assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    assert got.PixelData == src.PixelData and got.SOPInstanceUID == src.SOPInstanceUID
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.dcm"]
    path = web.requests[0]["path"]
    assert path == (f"/dicom-web/studies/{src.StudyInstanceUID}/series/"
                    f"{src.SeriesInstanceUID}/instances/{src.SOPInstanceUID}")
    assert "transfer-syntax=*" in web.requests[0]["headers"]["Accept"]


@pytest.mark.parametrize("step, error, words", [
    (("status", 502, "bad gateway"), NetworkError, "WADO-RS: HTTP 502"),
    (("status", 404, "instance deleted"), WebRefusedError, "instance deleted"),
    (("hang", 3.0), NetworkError, "no answer within 0.5 s"),
    ("cut", NetworkError, "WADO-RS"),
    ("other", InvalidInstanceError, "answered instance"),
])
def test_a_failed_retrieval_leaves_nothing(web, tmp_path, step, error, words) -> None:
    video = make_video(tmp_path / "v.dcm", seconds=0.2)
    if step == "cut":
        step = ("dicom", video.read_bytes(), 5000)
    elif step == "other":
        other = make_video(tmp_path / "w.dcm", seconds=0.2, seed=9)
        step = ("dicom", other.read_bytes(), None)
    web.then = step
    dest = tmp_path / "got" / "x.dcm"
    dest.parent.mkdir()
    with pytest.raises(error, match=words):
        retrieve_instance(WebSource(web.url, timeout=0.5), _inst(video), dest)
    assert list(dest.parent.iterdir()) == []


def test_bearer_token_comes_from_the_named_variable(web) -> None:
    web.then = ("json", [])
    source = web_source(web.url, WebOptions(auth="bearer", token_env="AMAGI_TEST_TOKEN"),
                        {"AMAGI_TEST_TOKEN": "t0ken"})
    assert find_video_instances(source) == []
    assert {r["headers"]["Authorization"] for r in web.requests} == {"Bearer t0ken"}
    with pytest.raises(ConfigError, match="AMAGI_TEST_TOKEN \\(its token\\) is not set"):
        web_source(web.url, WebOptions(auth="bearer", token_env="AMAGI_TEST_TOKEN"), {})
    with pytest.raises(ConfigError, match="credentials do not belong"):
        web_source("https://u:p@pacs/dicom-web", WebOptions(), {})


@pytest.mark.parametrize(("token", "how"), [
    ("t0ken-42\n", "ends with a control character \\(a newline\\?\\)"),
    ("t0k\r\nX-Evil: 1", "holds 2 characters \\(control or beyond Latin-1\\)"),
    ("t0kén€", "holds 1 characters \\(control or beyond Latin-1\\)")])
def test_a_token_no_header_can_carry_is_refused_unshown(token: str, how: str) -> None:
    # a mounted secret file read with its newline; a header injection attempt
    opts = WebOptions(auth="bearer", token_env="AMAGI_TEST_TOKEN")
    with pytest.raises(ConfigError, match=f"AMAGI_TEST_TOKEN \\(its token\\) {how}") as e:
        web_source("http://pacs/dicom-web", opts, {"AMAGI_TEST_TOKEN": token})
    assert "t0k" not in str(e.value)
    # a password is sent base64-encoded from Latin-1: control characters are fine there
    basic = WebOptions(auth="basic", username="u", password_env="AMAGI_TEST_PW")
    if token.isascii():
        assert web_source("http://pacs/dicom-web", basic, {"AMAGI_TEST_PW": token}).auth
    else:
        with pytest.raises(ConfigError, match="AMAGI_TEST_PW \\(its password\\) holds 1"):
            web_source("http://pacs/dicom-web", basic, {"AMAGI_TEST_PW": token})


def test_poll_once_against_a_failing_server_says_why(web, run_cli, tmp_path) -> None:
    web.then = ("status", 503, "archive busy")
    r = run_cli("poll", "--source", web.url, "--once", "--storage-var-dir", str(tmp_path / "v"),
                env={})
    assert r.code == 69, r.stderr
    assert f"QIDO-RS: HTTP 503 Service Unavailable from {web.url}: archive busy" in r.stderr


def test_study_urls() -> None:
    assert parse_study_url("dicomweb+https://pacs:8443/dicom-web/studies/1.2.3") == (
        "https://pacs:8443/dicom-web", "1.2.3", None)
    assert parse_study_url("dicomweb+http://h/studies/1.2/series/1.2.3/") == (
        "http://h", "1.2", "1.2.3")
    for bad, words in [("https://h/dicom-web/studies/1.2", "not a DICOMweb study URL"),
                       ("dicomweb+https://h/dicom-web", "no /studies/STUDY_UID"),
                       ("dicomweb+https://h/studies/1.2/instances/3", "must end in"),
                       ("dicomweb+https://h/studies/1.02", "Study Instance UID")]:
        with pytest.raises(InputError, match=words):
            parse_study_url(bad)


def test_poll_once_with_a_failed_retrieval_queues_nothing_and_exits_1(web, run_cli, tmp_path
                                                                      ) -> None:
    import sqlalchemy as sa

    from db import open_database
    from db.schema import Instance

    # QIDO-RS lists one Video Endoscopic instance (one query per video class), WADO-RS fails.
    web.plan = [("json", [_qido(VIDEO_ENDOSCOPIC)]), ("json", []), ("json", [])]
    web.then = ("status", 503, "busy")
    var = tmp_path / "var"
    r = run_cli("poll", "--source", web.url, "--once", "--storage-var-dir", str(var), env={})
    assert r.code == 1, r.stderr
    assert "1 video instance(s) listed, 0 already known, 0 retrieved and queued, 1 failed" \
        in r.stdout
    assert [p for p in (var / "spool").rglob("*") if p.is_file()] == []
    database = open_database(f"sqlite:///{var}/amagi.db")
    try:
        with database.session() as s:
            assert s.scalars(sa.select(Instance)).all() == []
    finally:
        database.dispose()


@pytest.mark.parametrize("args, words", [
    (["--recent-days", "0"], "--recent-days must be at least 1, got 0"),
    (["--recent-days", "2", "--full-every", "0"], "--full-every must be more than 0 hours"),
])
def test_poll_schedule_options_are_checked_before_any_query(web, run_cli, tmp_path, args,
                                                            words) -> None:
    r = run_cli("poll", "--source", web.url, *args, "--storage-var-dir", str(tmp_path / "v"),
                env={})
    assert r.code == 2, r.stderr
    assert words in r.stderr
    assert web.requests == []
