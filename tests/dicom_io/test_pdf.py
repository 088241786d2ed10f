"""The report as an Encapsulated PDF: validity, round trip, listed by the KOS, and delivered
to real peers (DCMTK storescp, Orthanc) by the same C-STORE SCU the delivery loop uses."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.keyimages import write_key_images
from dicom_io.kos import write_key_object_selection
from dicom_io.net.scu import send_instances
from dicom_io.pdf import DOCUMENT_TITLE, read_encapsulated_pdf, write_encapsulated_pdf
from dicom_io.results import DEMO_DISCLAIMER, InvalidResultError
from dicom_io.sopclasses import ENCAPSULATED_PDF
from tests.amagi_plugin.serve_support import Orthanc, running
from tests.dicom_io._net_fixtures import (
    dataset_part,
    free_port,
    pynetdicom_config,  # noqa: F401
)
from tests.dicom_io._writers_fixtures import (
    AUTHORS,
    CODECS,
    DEMO,
    assert_same_patient_and_study,
    assert_valid,
    make_events,
    make_sources,
    only_dcm_files,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory)


def _pdf(text: str = "bleeding report") -> bytes:
    fig = Figure(figsize=(3, 2))
    fig.text(0.1, 0.5, text)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="pdf")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pdf_odd() -> bytes:
    """A real PDF of odd length (the writer must pad it and read it back exactly)."""
    data = _pdf()
    return data if len(data) % 2 else data + b"\n"


@pytest.mark.integration
@pytest.mark.parametrize("codec", CODECS)
def test_pdf_validates_and_round_trips(sources, tmp_path, codec, pdf_odd):
    src = sources[codec]
    ref = write_encapsulated_pdf(src.header, pdf_odd, DEMO, tmp_path)

    only_dcm_files(tmp_path)
    assert assert_valid(ref.path) == []
    ds = dcmread(ref.path)
    assert ds.SOPClassUID == ENCAPSULATED_PDF == ref.sop_class_uid
    assert_same_patient_and_study(ds, src.header)
    assert ds.Modality == "DOC" and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.DocumentTitle == DOCUMENT_TITLE and ds.BurnedInAnnotation == "YES"
    assert ds.SeriesDescription == DEMO_DISCLAIMER
    assert ds.EncapsulatedDocumentLength == len(pdf_odd)
    assert len(ds.EncapsulatedDocument) == len(pdf_odd) + 1  # padded to even length
    source_ref = ds.SourceInstanceSequence[0]
    assert source_ref.ReferencedSOPInstanceUID == src.header.SOPInstanceUID
    assert source_ref.ReferencedSOPClassUID == src.header.SOPClassUID
    assert read_encapsulated_pdf(ref.path) == pdf_odd


def test_pdf_given_uids_and_bad_arguments(sources, tmp_path, pdf_odd):
    src = sources["h264"]
    series, sop = generate_uid(), generate_uid()
    ref = write_encapsulated_pdf(src.header, pdf_odd, AUTHORS, tmp_path,
                                 series_instance_uid=series, sop_instance_uid=sop,
                                 series_number=77)
    assert (ref.series_instance_uid, ref.sop_instance_uid) == (series, sop)
    ds = dcmread(ref.path, stop_before_pixels=True)
    assert ds.SeriesNumber == 77 and DEMO_DISCLAIMER not in ds.SeriesDescription
    with pytest.raises(InvalidResultError, match="pdf does not start with"):
        write_encapsulated_pdf(src.header, b"<html></html>", DEMO, tmp_path)
    with pytest.raises(InvalidResultError, match="pdf must be bytes"):
        write_encapsulated_pdf(src.header, "%PDF-1.4", DEMO, tmp_path)
    with pytest.raises(InvalidResultError, match="document_title"):
        write_encapsulated_pdf(src.header, pdf_odd, DEMO, tmp_path, document_title="x" * 65)
    with pytest.raises(InvalidResultError, match="algorithm must be an AlgorithmInfo"):
        write_encapsulated_pdf(src.header, pdf_odd, "AMAGI", tmp_path)
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.integration
def test_kos_lists_the_report(sources, tmp_path, pdf_odd):
    src = sources["uncompressed"]
    events = make_events(2)
    images = write_key_images(src.header, {e.key_frame: src.frames[e.key_frame - 1]
                                           for e in events}, DEMO, tmp_path)
    report = write_encapsulated_pdf(src.header, pdf_odd, DEMO, tmp_path)
    kos = write_key_object_selection(src.header, [e.key_frame for e in events], images, DEMO,
                                     tmp_path, documents=[report])
    assert assert_valid(kos.path) == []
    ds = dcmread(kos.path)
    composite = [c for c in ds.ContentSequence if c.ValueType == "COMPOSITE"]
    assert [(c.ReferencedSOPSequence[0].ReferencedSOPClassUID,
             c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for c in composite] == \
        [(ENCAPSULATED_PDF, report.sop_instance_uid)]
    evidence = {(series.SeriesInstanceUID, sop.ReferencedSOPInstanceUID)
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence}
    assert (report.series_instance_uid, report.sop_instance_uid) in evidence
    with pytest.raises(InvalidResultError, match="documents were given without key_frames"):
        write_key_object_selection(src.header, [], [], DEMO, tmp_path, documents=[report])




@pytest.fixture
def report_files(sources, tmp_path) -> list[Path]:
    src = sources["h264"]
    events = make_events(1)
    out = tmp_path / "results"
    out.mkdir()
    report = write_encapsulated_pdf(src.header, _pdf("event 1: 0.1-0.5 s"), DEMO, out)
    kos = write_key_object_selection(src.header, [events[0].key_frame], [], DEMO, out,
                                     documents=[report])
    return [report.path, kos.path]


@pytest.mark.integration
@pytest.mark.usefixtures("pynetdicom_config")
def test_report_reaches_dcmtk_storescp(storescp, report_files):
    port, out = storescp
    results = send_instances(report_files, "STORESCP", "127.0.0.1", port)
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in out.glob("*.dcm")}
    for path, result in zip(report_files, results, strict=True):
        assert dataset_part(received[result.sop_instance_uid or ""]) == dataset_part(path)
    assert read_encapsulated_pdf(received[results[0].sop_instance_uid or ""]) == \
        read_encapsulated_pdf(report_files[0])


@pytest.mark.integration
@pytest.mark.usefixtures("pynetdicom_config")
def test_report_reaches_orthanc_and_is_served_as_pdf(tmp_path, report_files):
    with running(Orthanc(tmp_path / "orthanc", amagi_port=free_port())) as pacs:
        host, port = "127.0.0.1", pacs.dicom_port
        results = send_instances(report_files, pacs.ae_title, host, port)
        assert [r.ok for r in results] == [True, True], [r.error for r in results]
        found = pacs.post("/tools/lookup", (results[0].sop_instance_uid or "").encode())
        assert [f["Type"] for f in found] == ["Instance"]
        tags = pacs.get(f"/instances/{found[0]['ID']}/simplified-tags")
        assert tags["SOPClassUID"] == ENCAPSULATED_PDF and tags["Modality"] == "DOC"
        url = f"http://127.0.0.1:{pacs.http_port}/instances/{found[0]['ID']}/pdf"
        with urllib.request.urlopen(url, timeout=30) as r:
            served = r.read()
        assert served == read_encapsulated_pdf(report_files[0])
        assert [f["Type"] for f in pacs.post("/tools/lookup", (
            results[1].sop_instance_uid or "").encode())] == ["Instance"]


@pytest.mark.parametrize(("charset", "name"), [
    ("ISO_IR 100", "Müller^Jürgen"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    ("ISO_IR 192", "Иванов^Иван"),
])
@pytest.mark.integration
def test_pdf_keeps_the_patient_name_in_its_character_set(sources, tmp_path, pdf_odd, charset,
                                                         name):
    header = sources["h264"].header.copy()
    header.SpecificCharacterSet = charset
    header.PatientName = name
    ref = write_encapsulated_pdf(header, pdf_odd, DEMO, tmp_path)
    assert_valid(ref.path)
    assert str(dcmread(ref.path).PatientName) == name
