"""SOP classes and transfer syntaxes the plugin accepts and writes (DESIGN.md §4, PS3.4 B.5)."""

from __future__ import annotations

VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
VIDEO_MICROSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.2.1"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"

VIDEO_SOP_CLASSES = frozenset({VIDEO_ENDOSCOPIC, VIDEO_MICROSCOPIC, VIDEO_PHOTOGRAPHIC})
#: Image SOP classes whose instances (or series) the pipeline analyses.
INPUT_SOP_CLASSES = VIDEO_SOP_CLASSES | {VL_ENDOSCOPIC, MULTIFRAME_TRUE_COLOR_SC}

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
#: Result SOP classes we write (and accept back from a PACS).
RESULT_SOP_CLASSES = frozenset({COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR, SEGMENTATION,
                                KEY_OBJECT_SELECTION, VL_ENDOSCOPIC, ENCAPSULATED_PDF})


def is_series_frame(sop_class_uid: str, number_of_frames: int | None) -> bool:
    """Whether an instance is one image of a single-frame VL Endoscopic series: such a series
    is one video, analysed once all its images are in (:mod:`dicom_io.series`)."""
    return sop_class_uid == VL_ENDOSCOPIC and (number_of_frames or 1) == 1
