"""Key Object Selection Document "Of Interest" (PS3.3 A.35.4, TID 2010) for the key frames.

Lists each key frame as an IMAGE item referencing the video with its Referenced Frame
Number, then each key image (VL Endoscopic, :mod:`dicom_io.keyimages`), then each report
document (the Encapsulated PDF, :mod:`dicom_io.pdf`) as a COMPOSITE item, so that viewers
that follow the KOS show the report too. Built with
``highdicom.ko``; frame numbers are added to the video items afterwards, since highdicom
does not take them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io._writer_common import (
    MANUFACTURER,
    add_algorithm_equipment,
    check_frame_number,
    check_out_dir,
    check_positive_int,
    check_source,
    frame_count,
    instance_ref,
    new_uids,
    reference_dataset,
    result_character_set,
    save_atomically,
)
from dicom_io.results import AlgorithmInfo, InstanceRef, InvalidResultError

logger = logging.getLogger(__name__)

DEFAULT_SERIES_NUMBER = 903
SERIES_DESCRIPTION = "AMAGI bleeding key objects"


def _references(refs: Sequence[InstanceRef | Dataset], name: str, source: Dataset,
                ) -> list[Dataset]:
    if isinstance(refs, (str, bytes)) or not isinstance(refs, Sequence):
        raise InvalidResultError(f"{name} must be a sequence, got {refs!r}")
    datasets = [reference_dataset(ref, f"{name}[{i}]") for i, ref in enumerate(refs)]
    for i, ds in enumerate(datasets):
        if ds.StudyInstanceUID != source.StudyInstanceUID:
            raise InvalidResultError(f"{name}[{i}] is in study {ds.StudyInstanceUID}, "
                                     f"not the video's study {source.StudyInstanceUID}")
    return datasets


def write_key_object_selection(
    source: Dataset,
    key_frames: Sequence[int],
    key_images: Sequence[InstanceRef | Dataset],
    algorithm: AlgorithmInfo,
    out_dir: str | os.PathLike[str],
    *,
    documents: Sequence[InstanceRef | Dataset] = (),
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
) -> InstanceRef | None:
    """Write a KOS titled "Of Interest" (DCM 113000) listing key frames and key images.

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the video (``stop_before_pixels=True``); patient and study are copied.
    key_frames : sequence of int
        1-based frame numbers of the video, listed in ascending order (duplicates dropped).
    key_images : sequence of InstanceRef or pydicom.Dataset
        Key images written by :func:`dicom_io.keyimages.write_key_images`; they must be in
        the study of ``source``.
    algorithm : AlgorithmInfo
        Named in the device observer context and the Key Object Description.
    out_dir : path-like
        Existing directory; the file is ``<SOPInstanceUID>.dcm``.
    documents : sequence of InstanceRef or pydicom.Dataset
        Non-image objects to list, e.g. the report PDF of :func:`dicom_io.pdf.write_encapsulated_pdf`;
        they must be in the study of ``source``.
    series_instance_uid, sop_instance_uid : str, optional
        UIDs of the new series and instance; fresh when omitted.
    series_number, instance_number : int
        Series and Instance Number.

    Returns
    -------
    InstanceRef or None
        The written KOS, or ``None`` when ``key_frames`` is empty (no events): a KOS
        must reference at least one object. Key images or documents without key frames
        are an error.
    """
    source = check_source(source)
    if isinstance(key_frames, (str, bytes)) or not isinstance(key_frames, Sequence):
        raise InvalidResultError(f"key_frames must be a sequence of ints, got {key_frames!r}")
    n_frames = frame_count(source)
    frames = sorted({check_frame_number(f"key_frames[{i}]", f, n_frames)
                     for i, f in enumerate(key_frames)})
    images = _references(key_images, "key_images", source)
    docs = _references(documents, "documents", source)
    if not isinstance(algorithm, AlgorithmInfo):
        raise InvalidResultError(f"algorithm must be an AlgorithmInfo, got {algorithm!r}")
    out = check_out_dir(out_dir)
    series_uid, sop_uid = new_uids(source, series_instance_uid, sop_instance_uid)
    check_positive_int("series_number", series_number)
    check_positive_int("instance_number", instance_number)
    if not frames:
        if images or docs:
            raise InvalidResultError("key_images or documents were given without key_frames")
        logger.info("no key frames for %s: no KOS written", source.SOPInstanceUID)
        return None

    description = (f"Key frames of {len(frames)} active bleeding event(s) found by "
                   f"{algorithm.name} {algorithm.version}")
    if algorithm.disclaimer:
        description += f"; {algorithm.disclaimer}"
    device = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(Code("121007", "DCM", "Device")),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid, name=algorithm.name, manufacturer_name=MANUFACTURER,
            model_name=algorithm.name))
    content = hd.ko.KeyObjectSelection(
        document_title=codes.OF_INTEREST, referenced_objects=[source] * len(frames),
        observer_device_context=device, description=description)
    container = content[0]
    references = [c for c in container.ContentSequence if c.ValueType == "IMAGE"]
    for item, frame in zip(references, frames, strict=True):
        item.ReferencedSOPSequence[0].ReferencedFrameNumber = frame
    for image in images:
        container.ContentSequence.append(hd.sr.ImageContentItem(
            name=codes.SOURCE, referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID, relationship_type="CONTAINS"))
    for doc in docs:
        container.ContentSequence.append(hd.sr.CompositeContentItem(
            name=codes.SOURCE, referenced_sop_class_uid=doc.SOPClassUID,
            referenced_sop_instance_uid=doc.SOPInstanceUID, relationship_type="CONTAINS"))
    try:
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=[source, *images, *docs], content=content,
            series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=sop_uid, instance_number=instance_number,
            manufacturer=MANUFACTURER,
            series_description=algorithm.disclaimer or SERIES_DESCRIPTION,
            specific_character_set=result_character_set(source))
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidResultError(f"could not build the KOS: {e}") from e
    add_algorithm_equipment(kos, algorithm)
    path = save_atomically(kos, out)
    logger.info("KOS with %d key frames, %d key images and %d documents for %s", len(frames),
                len(images), len(docs), source.SOPInstanceUID)
    return instance_ref(kos, path)
