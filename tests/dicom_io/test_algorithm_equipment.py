"""IHE AI Results: every result object names the algorithm in its Contributing Equipment
Sequence, with a Device UID derived from the weights (a retrained checkpoint differs)."""

from __future__ import annotations

import io
import os

import pytest
from matplotlib.figure import Figure
from pydicom import dcmread

from dicom_io._writer_common import find_algorithm_equipment
from dicom_io.keyimages import write_key_images
from dicom_io.kos import write_key_object_selection
from dicom_io.pdf import write_encapsulated_pdf
from dicom_io.results import (
    MANUFACTURER,
    AlgorithmInfo,
    InvalidResultError,
    is_valid_uid,
    weights_device_uid,
)
from dicom_io.seg import write_bleeding_segmentation
from dicom_io.sr import read_bleeding_report, write_bleeding_report
from tests.dicom_io._writers_fixtures import (
    DEMO,
    make_events,
    make_index,
    make_masks,
    make_sources,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory)


def _weights(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_device_uid_follows_the_weights_bytes(tmp_path):
    trained = _weights(tmp_path, "model.pth", b"\x80weights" * 100_000)
    copy = _weights(tmp_path, "elsewhere.pth", trained.read_bytes())
    retrained = _weights(tmp_path, "model2.pth", trained.read_bytes()[:-1] + b"\x00")
    uid = weights_device_uid(trained)
    assert is_valid_uid(uid) and uid.startswith("2.25.") and len(uid) <= 64
    assert weights_device_uid(copy) == uid  # the contents count, not the name or place
    assert weights_device_uid(retrained) != uid
    with pytest.raises(InvalidResultError, match="cannot read the weights file"):
        weights_device_uid(tmp_path / "missing.pth")
    # Retrained in place (same path and size, new bytes): the UID follows the new file.
    trained.write_bytes(retrained.read_bytes())
    os.utime(trained, ns=(1, 1))
    assert weights_device_uid(trained) == weights_device_uid(retrained) != uid


def test_algorithm_device_uid_default_and_checks():
    a = AlgorithmInfo("AMAGI-SF50", "1.0")
    assert is_valid_uid(a.device_uid)
    assert AlgorithmInfo("AMAGI-SF50", "1.0").device_uid == a.device_uid  # deterministic
    assert AlgorithmInfo("AMAGI-SF50", "1.1").device_uid != a.device_uid
    assert AlgorithmInfo("AMAGI-SF50", "1.0", device_uid="1.2.3").device_uid == "1.2.3"
    with pytest.raises(InvalidResultError, match="device_uid is not a valid DICOM UID"):
        AlgorithmInfo("AMAGI-SF50", "1.0", device_uid="1.2.x")


def _pdf() -> bytes:
    buffer = io.BytesIO()
    Figure(figsize=(2, 2)).savefig(buffer, format="pdf")
    return buffer.getvalue()


def _write_all(src, algorithm, out):
    events = make_events(2)
    images = write_key_images(src.header, {e.key_frame: src.frames[e.key_frame - 1]
                                           for e in events}, algorithm, out)
    pdf = write_encapsulated_pdf(src.header, _pdf(), algorithm, out)
    return {
        "sr": write_bleeding_report(src.header, events, make_index(events), algorithm, out),
        "seg": write_bleeding_segmentation(src.header, make_masks(events), algorithm, out),
        "key image": images[0],
        "pdf": pdf,
        "kos": write_key_object_selection(src.header, [e.key_frame for e in events], images,
                                          algorithm, out, documents=[pdf]),
    }


def test_every_object_names_the_algorithm_with_its_weights_uid(sources, tmp_path):
    uid_a = weights_device_uid(_weights(tmp_path, "a.pth", b"first training run"))
    uid_b = weights_device_uid(_weights(tmp_path, "b.pth", b"second training run"))
    first = AlgorithmInfo(DEMO.name, DEMO.version, DEMO.weights, DEMO.description, uid_a)
    retrained = AlgorithmInfo(DEMO.name, DEMO.version, DEMO.weights, DEMO.description, uid_b)
    src = sources["h264"]
    for algorithm, directory in ((first, tmp_path / "a"), (retrained, tmp_path / "b")):
        directory.mkdir()
        refs = _write_all(src, algorithm, directory)
        for kind, ref in refs.items():
            ds = dcmread(ref.path, stop_before_pixels=True)
            item = find_algorithm_equipment(ds)
            assert item is not None, kind
            assert (item.Manufacturer, item.ManufacturerModelName, item.SoftwareVersions,
                    item.DeviceUID) == (MANUFACTURER, DEMO.name, DEMO.version,
                                        algorithm.device_uid), kind
            purpose = item.PurposeOfReferenceCodeSequence[0]
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
            assert DEMO.disclaimer in item.ContributionDescription
            assert (ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions) == \
                (MANUFACTURER, DEMO.name, DEMO.version), kind
            assert [i.get("DeviceUID") for i in ds.ContributingEquipmentSequence
                    if i.get("DeviceUID")] == [algorithm.device_uid], kind  # exactly one
            if kind in ("sr", "kos"):  # the device observer is the same device
                assert algorithm.device_uid in str(ds), kind
        assert read_bleeding_report(refs["sr"].path).algorithm == algorithm
    assert uid_a != uid_b


def test_acquisition_equipment_is_kept(sources, tmp_path):
    src = sources["uncompressed"]
    refs = _write_all(src, DEMO, tmp_path)
    for kind in ("sr", "seg"):  # highdicom records the source's acquisition equipment
        items = dcmread(refs[kind].path, stop_before_pixels=True).ContributingEquipmentSequence
        purposes = [i.PurposeOfReferenceCodeSequence[0].CodeValue for i in items]
        assert "109101" in purposes and purposes.count("109102") >= 2, (kind, purposes)
