"""BINARY bleeding masks on the key frames of a video: Segmentation IOD (PS3.3 A.51).

highdicom 0.28 refuses a multi-frame source without a Frame of Reference (every video
IOD), so this writer follows the measured workaround of ``stack_notes.md`` §4: highdicom
builds a one-frame SEG against the video header presented as a single-frame VL Endoscopic
image; the references are then patched back to the video SOP class and its frame numbers,
one SEG frame per key frame, with a second dimension (Temporal Position Index, in frame
order). The pixel data need not be loaded: a header read with ``stop_before_pixels=True``
works for H.264 and uncompressed sources alike. The result passes ``dciodvfy``.

Segment 1: category Morphologically Altered Structure (SCT 49755003), type Hemorrhage
(SCT 50960005), algorithm type AUTOMATIC.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset, Sequence
from pydicom.tag import Tag

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
    result_character_set,
    save_atomically,
)
from dicom_io.errors import InvalidInstanceError
from dicom_io.results import AlgorithmInfo, InstanceRef, InvalidResultError
from dicom_io.sopclasses import SEGMENTATION, VL_ENDOSCOPIC

logger = logging.getLogger(__name__)

DEFAULT_SERIES_NUMBER = 901
SERIES_DESCRIPTION = "AMAGI bleeding segmentation"
SEGMENT_LABEL = "Active bleeding"


def _check_masks(masks: Mapping[int, np.ndarray], source: Dataset,
                 ) -> list[tuple[int, np.ndarray]]:
    if not isinstance(masks, Mapping):
        raise InvalidResultError(
            f"masks must be a mapping frame number -> (Rows, Columns) array, got {masks!r}")
    n_frames = frame_count(source)
    shape = (int(source.Rows), int(source.Columns))
    checked = []
    for frame, mask in sorted(masks.items()):
        check_frame_number("masks key", frame, n_frames)
        arr = np.asarray(mask)
        if arr.shape != shape:
            raise InvalidResultError(
                f"mask of frame {frame} has shape {arr.shape}, the video frames are {shape}")
        if arr.dtype != bool:
            if not np.isin(arr, (0, 1)).all():
                raise InvalidResultError(f"mask of frame {frame} must be boolean or 0/1 valued")
            arr = arr.astype(bool)
        checked.append((frame, arr))
    return checked


def _one_frame_seg(source: Dataset, mask: np.ndarray, algorithm: AlgorithmInfo,
                   series_uid: str, sop_uid: str, series_number: int,
                   instance_number: int) -> hd.seg.Segmentation:
    params = {"weights": algorithm.weights.value}
    if algorithm.disclaimer:
        params["note"] = algorithm.disclaimer
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version,
        family=codes.ARTIFICIAL_INTELLIGENCE, parameters=params)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.MORPHOLOGICALLY_ALTERED_STRUCTURE,
        segmented_property_type=codes.HEMORRHAGE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo)
    pretend = copy.deepcopy(source)  # stack_notes §4: present the video as one VL image
    pretend.NumberOfFrames = 1
    pretend.SOPClassUID = VL_ENDOSCOPIC
    text = algorithm.disclaimer or SERIES_DESCRIPTION
    return hd.seg.Segmentation(
        source_images=[pretend], pixel_array=mask[None], segmentation_type="BINARY",
        segment_descriptions=[description], series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=sop_uid,
        instance_number=instance_number, manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
        device_serial_number="0", omit_empty_frames=False, content_label="BLEEDING",
        content_description=text, series_description=text,
        specific_character_set=result_character_set(source))


def write_bleeding_segmentation(
    source: Dataset,
    masks: Mapping[int, np.ndarray],
    algorithm: AlgorithmInfo,
    out_dir: str | os.PathLike[str],
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
) -> InstanceRef | None:
    """Write the bleeding masks of the key frames as one BINARY Segmentation.

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the video (``stop_before_pixels=True``); patient and study are copied.
    masks : mapping int -> ndarray
        1-based frame number of the video -> mask, bool or 0/1, shape ``(Rows, Columns)``
        of the video (pixel-aligned with that frame). Frames are written in frame order.
    algorithm : AlgorithmInfo
        Written in the segment's Algorithm Identification Sequence.
    out_dir : path-like
        Existing directory; the file is ``<SOPInstanceUID>.dcm``.
    series_instance_uid, sop_instance_uid : str, optional
        UIDs of the new series and instance; fresh when omitted.
    series_number, instance_number : int
        Series and Instance Number.

    Returns
    -------
    InstanceRef or None
        The written SEG, or ``None`` when ``masks`` is empty (no events): no SEG is
        written then, since a Segmentation needs at least one frame.

    Raises
    ------
    InvalidResultError
        On invalid arguments.
    WriterError
        When building or saving fails.
    """
    source = check_source(source)
    checked = _check_masks(masks, source)
    if not isinstance(algorithm, AlgorithmInfo):
        raise InvalidResultError(f"algorithm must be an AlgorithmInfo, got {algorithm!r}")
    out = check_out_dir(out_dir)
    series_uid, sop_uid = new_uids(source, series_instance_uid, sop_instance_uid)
    check_positive_int("series_number", series_number)
    check_positive_int("instance_number", instance_number)
    if not checked:
        logger.info("no key frames for %s: no SEG written", source.SOPInstanceUID)
        return None
    try:
        seg = _one_frame_seg(source, checked[0][1], algorithm, series_uid, sop_uid,
                             series_number, instance_number)
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidResultError(f"could not build the bleeding SEG: {e}") from e
    _patch_to_video(seg, source, [f for f, _ in checked])
    bits = np.packbits(np.stack([m for _, m in checked]).reshape(-1), bitorder="little")
    data = bits.tobytes()
    seg.PixelData = data + b"\0" * (len(data) % 2)
    seg.NumberOfFrames = len(checked)
    seg.PatientOrientation = ""  # Type 2C, else dciodvfy reports an error (stack_notes §4)
    add_algorithm_equipment(seg, algorithm)
    path = save_atomically(seg, out)
    logger.info("bleeding SEG with %d key frames for %s", len(checked), source.SOPInstanceUID)
    return instance_ref(seg, path)


def _patch_to_video(seg: hd.seg.Segmentation, source: Dataset, frames: list[int]) -> None:
    """Point the one-frame SEG at the video's frames, one SEG frame per key frame."""
    template = seg.PerFrameFunctionalGroupsSequence[0]
    items = []
    for position, frame in enumerate(frames, 1):
        item = copy.deepcopy(template)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedFrameNumber = frame
        content = item.FrameContentSequence[0]
        content.DimensionIndexValues = [1, position]
        content.TemporalPositionIndex = position
        items.append(item)
    seg.PerFrameFunctionalGroupsSequence = Sequence(items)
    for series in seg.ReferencedSeriesSequence:
        for ref in series.ReferencedInstanceSequence:
            ref.ReferencedSOPClassUID = source.SOPClassUID
    for ref in seg.get("SourceImageSequence", []):
        ref.ReferencedSOPClassUID = source.SOPClassUID  # frames: per-frame groups only
    dimension = Dataset()
    dimension.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    dimension.DimensionIndexPointer = Tag("TemporalPositionIndex")
    dimension.FunctionalGroupPointer = Tag("FrameContentSequence")
    dimension.DimensionDescriptionLabel = "Temporal Position Index"
    seg.DimensionIndexSequence.append(dimension)


def read_bleeding_segmentation(path: str | os.PathLike[str]) -> dict[int, np.ndarray]:
    """Read a SEG written by :func:`write_bleeding_segmentation`.

    Returns
    -------
    dict
        1-based video frame number -> bool mask ``(Rows, Columns)``.

    Raises
    ------
    InvalidInstanceError
        When the file is not such a Segmentation.
    """
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # highdicom raises many kinds on a foreign file
        raise InvalidInstanceError(f"cannot read {path.name} as a Segmentation: {e}") from e
    if seg.SOPClassUID != SEGMENTATION or seg.SegmentationType != "BINARY":
        raise InvalidInstanceError(f"{path.name} is not a BINARY Segmentation")
    pixels = seg.pixel_array.astype(bool).reshape(-1, int(seg.Rows), int(seg.Columns))
    frames = {}
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        frames[int(ref.ReferencedFrameNumber)] = pixels[i]
    return frames
