"""``amagi serve`` delivering its real results by STOW-RS, on loopback: Orthanc with its
DICOMweb plugin as the archive, and a local HTTP server in front of it that fails first.

What reached Orthanc is checked through Orthanc's own REST API and QIDO-RS (urllib), never
through the code under test.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import pydicom
import pytest
import sqlalchemy as sa

from amagi_plugin.service.app import Service
from db.schema import Delivery
from tests.amagi_plugin.serve_support import (
    RESULT_MODALITIES,
    Orthanc,
    Services,
    free_port,
    make_video,
    running,
    status_of,
    storescu,
    wait_until,
)
from tests.dicom_io._web_fixtures import FlakyDicomweb

pytestmark = pytest.mark.integration

PASSWORD_ENV = "AMAGI_TEST_STOW_PASSWORD"


@pytest.fixture
def service(tmp_path, tiny_checkpoint):
    """``service(config_text)`` starts a service whose destinations come from a TOML file."""
    services = Services(tmp_path, tiny_checkpoint)

    def start(config_text: str = "", **extra: str) -> Service:
        f = tmp_path / "amagi.toml"
        f.write_text(config_text)
        return services.start(f, **extra)

    yield start
    services.stop()



def _attempts(svc: Service) -> list[tuple[str, int, str | None]]:
    with svc.database.session() as s:
        return [tuple(r) for r in s.execute(
            sa.select(Delivery.state, Delivery.attempts, Delivery.last_error).order_by(Delivery.id))]


def _web_table(url: str, **keys: object) -> str:
    lines = ["[[delivery.destinations]]", f'url = "{url}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def _study_modalities(orthanc: Orthanc, study_uid: str) -> dict[str, int]:
    """Orthanc's REST API: modality → instance count of the series of that study."""
    found = orthanc.post("/tools/lookup", study_uid.encode())
    studies = [f["ID"] for f in found if f["Type"] == "Study"]
    if not studies:
        return {}
    out: dict[str, int] = {}
    for series in orthanc.get(f"/studies/{studies[0]}/series"):
        m = series["MainDicomTags"].get("Modality", "")
        out[m] = out.get(m, 0) + len(series["Instances"])
    return out


def test_stow_rs_delivers_results_into_the_source_study(service, tmp_path, monkeypatch,
                                                        run_cli) -> None:
    users = {"amagi": "pw-from-the-environment"}
    monkeypatch.setenv(PASSWORD_ENV, users["amagi"])
    with running(Orthanc(tmp_path / "orthanc", free_port(), dicomweb=True, users=users)) as o:
        svc = service(_web_table(o.dicomweb_url + "/", auth="basic", username="amagi",
                                 password_env=PASSWORD_ENV))
        video = make_video(tmp_path / "video.dcm")
        src = pydicom.dcmread(video, stop_before_pixels=True)
        assert storescu(svc.port, video).returncode == 0
        found = wait_until(lambda: (m := _study_modalities(o, src.StudyInstanceUID)).keys()
                           >= RESULT_MODALITIES and m, 180, what="results in Orthanc's study")
        assert found == dict.fromkeys(RESULT_MODALITIES, 1)
        wait_until(lambda: status_of(svc)["deliveries"]["sent"] == 5, 30, what="deliveries recorded")

        # QIDO-RS (Orthanc's DICOMweb plugin, basic auth): the same five in the source study,
        # none in the video's own series.
        token = base64.b64encode(b"amagi:pw-from-the-environment").decode()
        req = urllib.request.Request(
            f"{o.dicomweb_url}/studies/{src.StudyInstanceUID}/instances",
            headers={"Authorization": f"Basic {token}", "Accept": "application/dicom+json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            instances = [pydicom.Dataset.from_json(d) for d in json.loads(r.read())]
        assert len(instances) == 5
        assert src.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in instances}
        with svc.database.session() as s:
            keys = set(s.scalars(sa.select(Delivery.destination)))
        assert keys == {o.dicomweb_url}  # the base URL names the destination, no credentials

        status = run_cli("status", "--storage-var-dir", str(tmp_path / "var"))
        assert status.code == 0 and "sent: 5" in status.stdout
        assert users["amagi"] not in status.stdout


def test_5xx_and_timeouts_are_retried_then_delivered(service, tmp_path) -> None:
    with running(Orthanc(tmp_path / "orthanc", free_port(), dicomweb=True)) as o, \
            running(FlakyDicomweb(upstream=o.dicomweb_url)) as web:
        web.plan = [("status", 503, "text/plain", "archive busy"), ("hang", 4.0)]
        svc = service(_web_table(web.url, timeout_s=1.0), **{"delivery.retry_initial_s": "1"})
        video = make_video(tmp_path / "video.dcm", seed=3)
        src = pydicom.dcmread(video, stop_before_pixels=True)
        assert storescu(svc.port, video).returncode == 0
        wait_until(lambda: any(a == 1 and "HTTP 503" in (e or "") for _, a, e in _attempts(svc)),
                   180, what="the first (503) attempt recorded")
        # Still owed: pending, with the server's words as the last error.
        assert all(state.value == "pending" for state, _, _ in _attempts(svc))
        assert "archive busy" in _attempts(svc)[0][2]
        wait_until(lambda: _study_modalities(o, src.StudyInstanceUID).keys() >= RESULT_MODALITIES,
                   60, what="delivery after the 503 and the timeout")
        wait_until(lambda: status_of(svc)["deliveries"]["sent"] == 5, 30, what="deliveries recorded")
        assert [r["step"] for r in web.requests] == ["status", "hang", "proxy"]
        # Each object: the 503, the timeout, then stored: three attempts, no error left.
        assert {(state.value, n, err) for state, n, err in _attempts(svc)} == {("sent", 3, None)}


def test_4xx_is_recorded_failed_with_the_reason_and_sent_on_retry(service, tmp_path,
                                                                  run_cli) -> None:
    var = str(tmp_path / "var")
    with running(FlakyDicomweb()) as web:
        reason = "Bad Request: study 1.2.3 is locked for editing"
        web.plan = [("status", 400, "text/plain", reason)]
        svc = service(_web_table(web.url))
        assert storescu(svc.port, make_video(tmp_path / "video.dcm", seed=4)).returncode == 0
        wait_until(lambda: status_of(svc)["deliveries"]["failed"] == 5, 180,
                   what="the refused deliveries recorded failed")
        expected = f"HTTP 400 Bad Request from {web.url}: {reason}"
        assert {(state.value, n, err) for state, n, err in _attempts(svc)} == {
            ("failed", 1, expected)}
        time.sleep(3)  # several retry periods (0.5-2 s): a refusal is not sent again by itself
        assert len(web.requests) == 1 and not web.stored

        status = run_cli("status", "--storage-var-dir", var)
        assert status.code == 0, status.stderr
        assert f"{web.url}: 5 failed" in status.stdout and expected in status.stdout
        retry = run_cli("deliveries", "retry", "--to", web.url + "/", "--storage-var-dir", var)
        assert retry.code == 0, retry.stderr
        assert retry.stdout.strip() == f"5 failed deliveries pending again to {web.url}"
        wait_until(lambda: status_of(svc)["deliveries"]["sent"] == 5, 60,
                   what="delivery after amagi deliveries retry")
        assert len(web.stored) == 5
        assert {ds.Modality for ds in web.stored.values()} == RESULT_MODALITIES


def test_serve_refuses_to_start_without_the_secret(run_cli, tmp_path, tiny_checkpoint) -> None:
    cfg = tmp_path / "amagi.toml"
    cfg.write_text(_web_table("https://pacs.example.org/dicom-web", auth="bearer",
                              token_env="AMAGI_TEST_STOW_TOKEN"))
    r = run_cli("serve", "--config", str(cfg), "--storage-var-dir", str(tmp_path / "var"),
                "--model-name", "amagi_tiny", "--model-checkpoint", str(tiny_checkpoint),
                "--port", str(free_port()), "--bind-address", "127.0.0.1",
                "--storage-reserve-mb", "16", env={})
    assert r.code == 2, r.stderr
    assert ("destination https://pacs.example.org/dicom-web: environment variable "
            "AMAGI_TEST_STOW_TOKEN (its token) is not set") in r.stderr


def test_destination_flag_takes_a_dicomweb_url(run_cli, tmp_path) -> None:
    r = run_cli("serve", "--destination", "https://amagi:hunter2@pacs/dicom-web",
                "--storage-var-dir", str(tmp_path / "var"), env={})
    assert r.code == 2
    assert "invalid --destination: 'https://***@pacs/dicom-web': credentials do not belong" \
        in r.stderr and "hunter2" not in r.stderr
    shown = run_cli("config", "show", "--set",
                    "delivery.destinations=https://pacs.example.org/dicom-web/", env={})
    assert shown.code == 0, shown.stderr
    assert "https://pacs.example.org/dicom-web (STOW-RS)" in shown.stdout
