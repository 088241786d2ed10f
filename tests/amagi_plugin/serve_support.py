"""Real peers for the service tests: DCMTK storescp/storescu and Orthanc, on loopback."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom

from amagi_plugin.config import load_config
from amagi_plugin.runtime import analyzer_from_config
from amagi_plugin.service.app import Service
from db.queries import service_status
from dicom_io.encode import VideoMetadata, write_video_dicom
from dicom_io.tools import dcmtk_program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def make_video(path: Path, seconds: float = 1.0, fps: float = 30.0, seed: int = 0,
               size=(96, 128), study_uid: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    frames = [np.clip(rng.normal(120, 30, (*size, 3)), 0, 255).astype(np.uint8)
              for _ in range(int(seconds * fps))]
    meta = VideoMetadata(patient_name="Test^Patient", patient_id=f"PID{seed:04d}")
    if study_uid:
        meta.study_instance_uid = study_uid
    write_video_dicom(frames, path, fps=fps, meta=meta)
    return path


def storescu(port: int, *files: Path, aec: str = "AMAGI", aet: str = "STORESCU",
             extra: tuple[str, ...] = ("-xn",), timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu: ``-xn`` proposes H.264 HP@L4.1, ``-R`` only the needed contexts."""
    cmd = [dcmtk_program("storescu"), *extra, "-R", "-aet", aet, "-aec", aec, "127.0.0.1", str(port),
           *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class StoreSCP:
    """DCMTK storescp accepting every transfer syntax into a directory."""

    def __init__(self, directory: Path, ae_title: str = "PACS", port: int | None = None) -> None:
        self.directory = directory
        self.ae_title = ae_title
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [dcmtk_program("storescp"), "+xa", "-aet", self.ae_title, "-od", str(self.directory), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._listening, 10, what="storescp to listen")
        return self

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def received(self) -> list[pydicom.Dataset]:
        out = []
        for f in sorted(self.directory.iterdir()):
            if f.is_file():
                with contextlib.suppress(Exception):
                    out.append(pydicom.dcmread(f, stop_before_pixels=True))
        return out

    def files(self) -> list[Path]:
        return sorted(f for f in self.directory.iterdir() if f.is_file())

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"


#: Orthanc's DICOMweb plugin, from Debian's orthanc-dicomweb (installed by ``make test``).
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """Debian's Orthanc, configured in a temporary directory on free ports.

    ``dicomweb``: load the DICOMweb plugin (``/dicom-web/``: STOW-RS, QIDO-RS, WADO-RS).
    ``users``: ``{name: password}`` that HTTP requests must authenticate as (basic); the
    fixture's own :meth:`get` and :meth:`post` use the first one.
    """

    def __init__(self, workdir: Path, amagi_port: int, ae_title: str = "ORTHANC",
                 dicomweb: bool = False, users: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = ae_title
        self.amagi_port = amagi_port
        self.dicomweb = dicomweb
        self.users = dict(users or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        exe = shutil.which("Orthanc")
        if exe is None:
            raise AssertionError("Orthanc is not installed (make test installs Debian 'orthanc')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "amagi-test", "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": self.ae_title, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpServerEnabled": True, "DicomServerEnabled": True,
            "DicomModalities": {"amagi": ["AMAGI", "127.0.0.1", self.amagi_port]},
            "DicomCheckCalledAet": False, "Plugins": [], "StableAge": 1,
            "DicomScuTimeout": 30, "HttpTimeout": 60,
        }
        if self.dicomweb:
            if not ORTHANC_DICOMWEB_PLUGIN.exists():
                raise AssertionError(f"{ORTHANC_DICOMWEB_PLUGIN} is missing (make test installs "
                                     "Debian 'orthanc-dicomweb')")
            config["Plugins"] = [str(ORTHANC_DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        if self.users:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = self.users
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        self.log = (self.workdir / "orthanc.log").open("wb")
        self.proc = subprocess.Popen([exe, str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._up, 30, what="Orthanc to start")
        return self

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.log.close()

    def _headers(self) -> dict[str, str]:
        if not self.users:
            return {}
        import base64

        user, password = next(iter(self.users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()
                                                             ).decode()}

    def get(self, path: str):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                     headers=self._headers())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, data: bytes | dict, timeout: float = 120):
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body,
                                     method="POST", headers=self._headers())
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip() else None

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (with ``dicomweb=True``)."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"


@contextlib.contextmanager
def running(peer) -> Iterator:
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


class CommittingPACS:
    """A pynetdicom peer that stores our result objects and answers Storage Commitment
    (N-ACTION, then an N-EVENT-REPORT on the same association) for what it stored."""

    def __init__(self, ae_title: str = "COMMITPACS") -> None:
        self.ae_title = ae_title
        self.stored: set[str] = set()
        self.server = None

    def start(self) -> CommittingPACS:
        import threading

        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        from dicom_io.net.commitment import STORAGE_COMMITMENT_PUSH_MODEL
        from dicom_io.sopclasses import RESULT_SOP_CLASSES
        from tests.dicom_io._net_fixtures import send_commitment_report

        def on_store(event):
            self.stored.add(event.request.AffectedSOPInstanceUID)
            return 0x0000

        def on_action(event):
            threading.Thread(target=send_commitment_report,
                             args=(event.assoc, event.action_information, self.stored),
                             daemon=True).start()
            return 0x0000, None

        ae = AE(self.ae_title)
        for uid in RESULT_SOP_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, on_store), (evt.EVT_N_ACTION, on_action)])
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.server.server_address[1]}"


def make_image_series(folder: Path, n: int = 20, fps: float = 30.0, seed: int = 0) -> list[Path]:
    """``n`` single-frame VL Endoscopic images of one series, ``1/fps`` s apart
    (Acquisition DateTime), as an endoscope that stores frames one by one."""
    import datetime as dt

    from pydicom.uid import generate_uid

    from dicom_io.encode import write_multiframe_dicom
    from dicom_io.sopclasses import VL_ENDOSCOPIC

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    t0 = dt.datetime(2026, 3, 2, 9, 0, 0)
    paths = []
    for k in range(n):
        path = folder / f"img_{k:03d}.dcm"
        frame = np.clip(rng.normal(120, 30, (96, 128, 3)), 0, 255).astype(np.uint8)
        meta = VideoMetadata(study_instance_uid=study, series_instance_uid=series,
                             sop_instance_uid=generate_uid(), instance_number=k + 1,
                             sop_class_uid=VL_ENDOSCOPIC)
        write_multiframe_dicom([frame], path, fps=1.0, meta=meta)
        ds = pydicom.dcmread(path)
        for kw in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "CineRate",
                   "RecommendedDisplayFrameRate", "StartTrim", "StopTrim"):
            delattr(ds, kw)
        stamp = t0 + dt.timedelta(seconds=k / fps)
        ds.AcquisitionDateTime = stamp.strftime("%Y%m%d%H%M%S.%f")
        ds.save_as(path)
        paths.append(path)
    return paths


#: The plugin's results for one video with one event: SR, SEG, key images, KOS, report PDF.
RESULT_MODALITIES = {"SR", "SEG", "ES", "KO", "DOC"}


def service_overrides(tmp: Path, checkpoint: Path, port: int, **extra: str) -> dict[str, str]:
    """Configuration of a test service: the tiny model, loopback, quick retries and leases."""
    return {
        "storage.var_dir": str(tmp / "var"), "storage.reserve_mb": "16",
        "listener.port": str(port), "listener.bind_address": "127.0.0.1",
        "model.name": "amagi_tiny", "model.checkpoint": str(checkpoint),
        "analysis.threshold": "1e-6", "worker.lease_s": "5",
        "delivery.retry_initial_s": "0.5", "delivery.retry_max_s": "2", **extra}


def status_of(svc: Service) -> dict:
    """``amagi status``'s view of a running service's database."""
    with svc.database.session() as s:
        return service_status(s)


class Services:
    """In-process services of one test (each on a free port), all stopped by :meth:`stop`."""

    def __init__(self, tmp: Path, checkpoint: Path) -> None:
        self.tmp, self.checkpoint = tmp, checkpoint
        self.started: list[Service] = []

    def start(self, config_file: Path | None = None, **extra: str) -> Service:
        cfg = load_config(config_file, environ={}, cwd=self.tmp, overrides=service_overrides(
            self.tmp, self.checkpoint, free_port(), **extra))
        analyzer, spec = analyzer_from_config(cfg)
        svc = Service(cfg, analyzer, spec)
        svc.start()
        self.started.append(svc)
        return svc

    def stop(self) -> None:
        for svc in self.started:
            svc.stop()
