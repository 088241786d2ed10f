"""The human-readable bleeding report as an Encapsulated PDF (PS3.3 A.45.1).

The PDF itself is made elsewhere (:mod:`amagi_plugin.report`); this writer wraps its bytes
in a new series (Modality ``DOC``) of the video's study: patient and study copied from the
video, Source Instance Sequence → the video, Burned In Annotation ``YES`` (the pages show
the patient's name), and the algorithm named in the General Equipment and Contributing
Equipment Sequence (IHE AI Results). The result passes ``dciodvfy``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io._writer_common import (
    MANUFACTURER,
    add_algorithm_equipment,
    check_out_dir,
    check_positive_int,
    check_source,
    instance_ref,
    new_uids,
    result_character_set,
    save_atomically,
)
from dicom_io.errors import InvalidInstanceError
from dicom_io.results import AlgorithmInfo, InstanceRef, InvalidResultError
from dicom_io.sopclasses import ENCAPSULATED_PDF

logger = logging.getLogger(__name__)

DEFAULT_SERIES_NUMBER = 904
SERIES_DESCRIPTION = "AMAGI bleeding report (PDF)"
DOCUMENT_TITLE = "AMAGI active bleeding report"
PDF_MIME_TYPE = "application/pdf"
_PDF_MAGIC = b"%PDF-"


def _check_pdf(pdf: object) -> bytes:
    if not isinstance(pdf, (bytes, bytearray, memoryview)):
        raise InvalidResultError(f"pdf must be bytes, got {type(pdf).__name__}")
    data = bytes(pdf)
    if not data.startswith(_PDF_MAGIC):
        raise InvalidResultError(f"pdf does not start with {_PDF_MAGIC!r}: {data[:8]!r}")
    if len(data) > 0xFFFFFFFE:  # Encapsulated Document Length is a UL
        raise InvalidResultError(f"pdf is too large for one DICOM instance: {len(data)} bytes")
    return data


def write_encapsulated_pdf(
    source: Dataset,
    pdf: bytes,
    algorithm: AlgorithmInfo,
    out_dir: str | os.PathLike[str],
    *,
    document_title: str = DOCUMENT_TITLE,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
) -> InstanceRef:
    """Write ``pdf`` as an Encapsulated PDF instance in the study of ``source``.

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the analysed video (``stop_before_pixels=True``); patient and study are
        copied from it and it is listed in Source Instance Sequence.
    pdf : bytes
        The whole PDF file (starts with ``%PDF-``).
    algorithm : AlgorithmInfo
        The algorithm whose results the PDF shows (General Equipment, Contributing
        Equipment); its disclaimer (demo weights) becomes the Series Description.
    out_dir : path-like
        Existing directory; the file is ``<SOPInstanceUID>.dcm``.
    document_title : str
        Document Title (up to 64 characters).
    series_instance_uid, sop_instance_uid : str, optional
        UIDs of the new series and instance; fresh when omitted.
    series_number, instance_number : int
        Series and Instance Number.

    Returns
    -------
    InstanceRef
        Identity and path of the written instance.

    Raises
    ------
    InvalidResultError
        On invalid arguments (message names the argument).
    WriterError
        When saving fails.
    """
    source = check_source(source, image=False)
    data = _check_pdf(pdf)
    if not isinstance(algorithm, AlgorithmInfo):
        raise InvalidResultError(f"algorithm must be an AlgorithmInfo, got {algorithm!r}")
    if not isinstance(document_title, str) or "\\" in document_title \
            or not 0 < len(document_title) <= 64:
        raise InvalidResultError(f"document_title must be 1-64 characters without '\\', "
                                 f"got {document_title!r}")
    out = check_out_dir(out_dir)
    series_uid, sop_uid = new_uids(source, series_instance_uid, sop_instance_uid)
    check_positive_int("series_number", series_number)
    check_positive_int("instance_number", instance_number)
    try:
        ds = hd.SOPClass(
            study_instance_uid=str(source.StudyInstanceUID), series_instance_uid=series_uid,
            series_number=series_number, sop_instance_uid=sop_uid,
            sop_class_uid=ENCAPSULATED_PDF, instance_number=instance_number, modality="DOC",
            manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=algorithm.disclaimer or SERIES_DESCRIPTION,
            specific_character_set=result_character_set(source))  # as in the SR, SEG, KOS
        ds.copy_patient_and_study_information(source)
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidResultError(f"could not build the Encapsulated PDF: {e}") from e
    ds.ConversionType = "WSD"  # SC Equipment: workstation
    ds.AcquisitionDateTime = ""
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = document_title
    ds.ConceptNameCodeSequence = []
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceInstanceSequence = [ref]
    ds.MIMETypeOfEncapsulatedDocument = PDF_MIME_TYPE
    ds.EncapsulatedDocument = data + b"\0" * (len(data) % 2)  # OB: even length
    ds.EncapsulatedDocumentLength = len(data)
    add_algorithm_equipment(ds, algorithm)
    path = save_atomically(ds, out)
    logger.info("report PDF (%d bytes) for %s", len(data), source.SOPInstanceUID)
    return instance_ref(ds, path)


def read_encapsulated_pdf(path: str | os.PathLike[str]) -> bytes:
    """The PDF held by an Encapsulated PDF instance, without the padding byte.

    Raises
    ------
    InvalidInstanceError
        When the file is not an Encapsulated PDF.
    """
    path = Path(path)
    try:
        ds = dcmread(path)
    except (OSError, InvalidDicomError) as e:
        raise InvalidInstanceError(f"cannot read {path}: {e}") from e
    if ds.get("SOPClassUID") != ENCAPSULATED_PDF or "EncapsulatedDocument" not in ds:
        raise InvalidInstanceError(f"{path.name} is not an Encapsulated PDF "
                                   f"(SOP class {ds.get('SOPClassUID')})")
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None:
        if not 0 <= int(length) <= len(data):
            raise InvalidInstanceError(f"{path.name}: Encapsulated Document Length {length} "
                                       f"exceeds the {len(data)} bytes held")
        return data[:int(length)]
    return data[:-1] if data.endswith(b"\0") else data
