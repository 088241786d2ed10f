"""Helpers for the dicom_io.net tests: real files, a recording listener, DCMTK runners.

Everything runs on 127.0.0.1 with ports picked by the OS. Videos are really encoded
(libx264 / mpeg2video / libx265 through :mod:`dicom_io.encode`), 8 frames of 64x96.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import _config

from dicom_io.encode import VideoMetadata, write_multiframe_dicom, write_video_dicom
from dicom_io.net.checks import dataset_offset
from dicom_io.net.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from dicom_io.net.listener import DicomListener
from dicom_io.net.records import AssociationSummary, StoredInstance
from dicom_io.sopclasses import COMPREHENSIVE_SR

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_NAME = "DOE^JANE^SECRET"
PATIENT_ID = "PID-424242"

@pytest.fixture(autouse=False)
def pynetdicom_config() -> Iterator[None]:
    """Restore pynetdicom's process-wide ``_config`` flags after a test."""
    saved = (_config.STORE_RECV_CHUNKED_DATASET, _config.STORE_SEND_CHUNKED_DATASET)
    yield
    _config.STORE_RECV_CHUNKED_DATASET, _config.STORE_SEND_CHUNKED_DATASET = saved


def frames(n: int = 8, rows: int = 64, cols: int = 96, seed: int = 0) -> np.ndarray:
    """RGB uint8 ``(n, rows, cols, 3)`` frames with motion."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(rows, cols, 3), dtype=np.uint8)
    return np.stack([np.roll(base, 4 * i, axis=1) for i in range(n)])


def meta(study: str | None = None, sop_class: str | None = None) -> VideoMetadata:
    m = VideoMetadata(patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    if study:
        m.study_instance_uid = study
    if sop_class:
        m.sop_class_uid = sop_class
    return m


def make_video(path: Path, codec: str = "h264", transfer_syntax: str | None = None,
               seed: int = 0) -> Path:
    """A really encoded Video Endoscopic instance."""
    write_video_dicom(frames(seed=seed), path, fps=10.0, codec=codec,
                      transfer_syntax=transfer_syntax, meta=meta())
    return path


def make_uncompressed(path: Path) -> Path:
    """Multi-frame RGB in Explicit VR Little Endian."""
    write_multiframe_dicom(frames(4, 32, 48), path, fps=10.0, meta=meta())
    return path


def _file_dataset(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.StudyDate = "20260101"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def make_sr(path: Path) -> Path:
    """A minimal Comprehensive SR (container with one TEXT item)."""
    ds = _file_dataset(COMPREHENSIVE_SR)
    ds.Modality = "SR"
    ds.SeriesNumber = 900
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = \
        "126000", "DCM", "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = [concept]
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "no bleeding"
    item_concept = Dataset()
    item_concept.CodeValue, item_concept.CodingSchemeDesignator, item_concept.CodeMeaning = \
        "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = [item_concept]
    ds.ContentSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    return path


def make_ct(path: Path) -> Path:
    """A tiny CT image: a SOP class the listener does not accept."""
    ds = _file_dataset(CT_IMAGE_STORAGE)
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_part(path: Path) -> bytes:
    """The bytes of a PS3.10 file after its File Meta group (what goes over the wire)."""
    data = path.read_bytes()
    return data[dataset_offset(path):]


def replace_dataset(src: Path, dst: Path, body: bytes) -> Path:
    """``src``'s preamble and File Meta followed by ``body`` (a raw, possibly broken data set)."""
    data = src.read_bytes()
    dst.write_bytes(data[:dataset_offset(src)] + body)
    return dst


@dataclass
class Recorder:
    """Collects what the listener reports; thread-safe."""

    stored: list[StoredInstance] = field(default_factory=list)
    released: list[AssociationSummary] = field(default_factory=list)
    phi: list[tuple[str, str]] = field(default_factory=list)
    fail_stored: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_stored(self, inst: StoredInstance) -> None:
        if self.fail_stored:
            raise RuntimeError("database unavailable")
        assert inst.path.is_file()  # the file is in place before the callback
        with self._lock:
            self.stored.append(inst)

    def on_released(self, summary: AssociationSummary) -> None:
        with self._lock:
            self.released.append(summary)

    def on_phi(self, name: str, pid: str) -> None:
        with self._lock:
            self.phi.append((name, pid))

    def wait_released(self, n: int, timeout: float = 10.0) -> list[AssociationSummary]:
        """Wait until ``n`` associations were reported (the report follows the response)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.released) >= n:
                    return list(self.released)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.released)} associations reported, expected {n}")


@contextlib.contextmanager
def running_listener(spool: Path, rec: Recorder, **kw: Any) -> Iterator[DicomListener]:
    """A started :class:`DicomListener` on 127.0.0.1 with a free port."""
    kw.setdefault("acse_timeout", 5.0)
    kw.setdefault("dimse_timeout", 10.0)
    kw.setdefault("network_timeout", 10.0)
    listener = DicomListener("AMAGI", "127.0.0.1", 0, spool, rec.on_stored, rec.on_released,
                             on_received_phi=rec.on_phi, **kw)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


def spool_files(spool: Path) -> list[Path]:
    """Every file below the spool, hidden ones included."""
    return sorted(p for p in spool.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def send_commitment_report(assoc: Any, request: Dataset, known: set[str]) -> int | None:
    """As a Storage Commitment SCP: report ``known`` instances committed, others failed;
    the status the requestor answered with (None: no answer)."""
    time.sleep(0.1)  # after the N-ACTION response, as a PACS would
    info = Dataset()
    info.TransactionUID = request.TransactionUID
    ok, failed = [], []
    for ref in request.ReferencedSOPSequence:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
        item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
        if ref.ReferencedSOPInstanceUID in known:
            ok.append(item)
        else:
            item.FailureReason = 0x0112  # no such object instance
            failed.append(item)
    if ok:
        info.ReferencedSOPSequence = ok
    if failed:
        info.FailedSOPSequence = failed
    status, _ = assoc.send_n_event_report(info, 2 if failed else 1,
                                          STORAGE_COMMITMENT_PUSH_MODEL,
                                          STORAGE_COMMITMENT_INSTANCE)
    return int(status.Status) if "Status" in status else None
