"""Key frames as single-frame VL Endoscopic Images (PS3.3 A.32.4), for viewers that cannot
overlay a SEG on a video.

Each image holds the RGB pixels of one video frame (given by the caller, decoded from the
video), uncompressed (Explicit VR Little Endian), in a new series of the source study, with
Source Image Sequence → the video and its Referenced Frame Number (PS3.3 C.7.6.1.1.4).
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from dicom_io._writer_common import (
    add_algorithm_equipment,
    check_frame_number,
    check_out_dir,
    check_positive_int,
    check_source,
    frame_count,
    instance_ref,
    new_uids,
    result_character_set,
    save_atomically,
    uid_or_new,
)
from dicom_io.results import AlgorithmInfo, InstanceRef, InvalidResultError
from dicom_io.sopclasses import VL_ENDOSCOPIC

logger = logging.getLogger(__name__)

DEFAULT_SERIES_NUMBER = 902
SERIES_DESCRIPTION = "AMAGI bleeding key frames"

# Patient, Clinical Trial Subject, General Study and Patient Study attributes copied as-is
_COPIED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence", "PatientAge", "PatientSize",
    "PatientWeight", "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "AnatomicRegionSequence",
)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _check_frames(frames: Mapping[int, np.ndarray], source: Dataset,
                  ) -> list[tuple[int, np.ndarray]]:
    if not isinstance(frames, Mapping):
        raise InvalidResultError(
            f"frames must be a mapping frame number -> uint8 (H, W, 3) array, got {frames!r}")
    n_frames = frame_count(source)
    shape = (int(source.Rows), int(source.Columns), 3)
    checked = []
    for number, rgb in sorted(frames.items()):
        check_frame_number("frames key", number, n_frames)
        arr = np.asarray(rgb)
        if arr.dtype != np.uint8 or arr.shape != shape:
            raise InvalidResultError(f"frame {number} must be uint8 {shape}, "
                                     f"got {arr.dtype} {arr.shape}")
        checked.append((number, np.ascontiguousarray(arr)))
    return checked


def _key_image(source: Dataset, number: int, rgb: np.ndarray, algorithm: AlgorithmInfo,
               series_uid: str, sop_uid: str, series_number: int, instance_number: int,
               now: _dt.datetime) -> Dataset:
    ds = Dataset()
    for key in _COPIED:
        if key in source:
            ds[key] = copy.deepcopy(source[key])
    charset = result_character_set(source)  # as in the SR, SEG and KOS
    if charset is None:
        ds.pop("SpecificCharacterSet", None)
    else:
        ds.SpecificCharacterSet = charset
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    ds.SOPClassUID = VL_ENDOSCOPIC
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # General Series, General Equipment
    ds.Modality = source.get("Modality") or "ES"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = algorithm.disclaimer or SERIES_DESCRIPTION
    add_algorithm_equipment(ds, algorithm)
    # General Image, VL Image, Acquisition Context
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"Frame {number} of the source video, key frame of a " \
                               f"bleeding event found by {algorithm.name} {algorithm.version}"
    comment = f"Key frame {number} of a bleeding event."
    ds.ImageComments = f"{comment} {algorithm.disclaimer}." if algorithm.disclaimer else comment
    ds.BurnedInAnnotation = "NO"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ref.ReferencedFrameNumber = number
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    ref.PurposeOfReferenceCodeSequence = [purpose]
    ds.SourceImageSequence = [ref]
    ds.AcquisitionContextSequence = []
    lossy = source.get("LossyImageCompression") == "01"
    ds.LossyImageCompression = "01" if lossy else "00"
    if lossy and "LossyImageCompressionMethod" in source:
        ds.LossyImageCompressionMethod = source.LossyImageCompressionMethod
    # Image Pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    data = rgb.tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_key_images(
    source: Dataset,
    frames: Mapping[int, np.ndarray],
    algorithm: AlgorithmInfo,
    out_dir: str | os.PathLike[str],
    *,
    series_instance_uid: str | None = None,
    sop_instance_uids: Sequence[str] | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
) -> list[InstanceRef]:
    """Write one single-frame VL Endoscopic Image per key frame, in one new series.

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the video (``stop_before_pixels=True``); patient and study are copied.
    frames : mapping int -> ndarray
        1-based frame number of the video -> its RGB pixels, uint8 ``(Rows, Columns, 3)``.
    algorithm : AlgorithmInfo
        Named in Derivation Description; its disclaimer (demo weights) goes into Series
        Description and Image Comments.
    out_dir : path-like
        Existing directory; files are ``<SOPInstanceUID>.dcm``.
    series_instance_uid : str, optional
        UID of the new series; fresh when omitted.
    sop_instance_uids : sequence of str, optional
        One UID per frame, in frame order; fresh when omitted.
    series_number : int
        Series Number; Instance Numbers are 1..n in frame order.

    Returns
    -------
    list of InstanceRef
        The written images in frame order (empty when ``frames`` is empty).
    """
    source = check_source(source)
    checked = _check_frames(frames, source)
    if not isinstance(algorithm, AlgorithmInfo):
        raise InvalidResultError(f"algorithm must be an AlgorithmInfo, got {algorithm!r}")
    out = check_out_dir(out_dir)
    series_uid, _ = new_uids(source, series_instance_uid, None)
    check_positive_int("series_number", series_number)
    if sop_instance_uids is None:
        sop_uids = [uid_or_new("sop_instance_uids", None) for _ in checked]
    else:
        sop_uids = [uid_or_new(f"sop_instance_uids[{i}]", u)
                    for i, u in enumerate(sop_instance_uids)]
        if len(sop_uids) != len(checked) or len(set(sop_uids)) != len(sop_uids):
            raise InvalidResultError(f"sop_instance_uids must be {len(checked)} distinct UIDs, "
                                     f"got {len(sop_uids)}")
        if {source.SOPInstanceUID, series_uid} & set(sop_uids):
            raise InvalidResultError("sop_instance_uids reuse the source's or the series' UID")
    now = _dt.datetime.now()
    written = []
    for i, ((number, rgb), uid) in enumerate(zip(checked, sop_uids, strict=True), 1):
        ds = _key_image(source, number, rgb, algorithm, series_uid, uid, series_number, i, now)
        written.append(instance_ref(ds, save_atomically(ds, out)))
    logger.info("%d key images for %s", len(written), source.SOPInstanceUID)
    return written
