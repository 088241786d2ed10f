"""The presentation contexts the listener accepts (DESIGN.md §4, PS3.4 Annex B.5, PS3.5 §10).

Everything not listed here is refused in association negotiation (PS3.8 §9.3.3.2): an unknown
SOP class gets result "abstract syntax not supported", a known one proposed only with other
transfer syntaxes gets "transfer syntaxes not supported".
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicom_io.encode import VIDEO_TRANSFER_SYNTAXES
from dicom_io.sopclasses import (
    COMPREHENSIVE_3D_SR,
    COMPREHENSIVE_SR,
    ENCAPSULATED_PDF,
    INPUT_SOP_CLASSES,
    KEY_OBJECT_SELECTION,
    RESULT_SOP_CLASSES,
    SEGMENTATION,
    VL_ENDOSCOPIC,
)

VERIFICATION = "1.2.840.10008.1.1"

#: Uncompressed little-endian syntaxes (PS3.5 §A.1, §A.2); Explicit first as preferred.
NATIVE_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Every MPEG-2, H.264 (incl. the fragmentable ``.1`` variants) and HEVC syntax (PS3.5 §A.4.5-12).
VIDEO_SYNTAXES: tuple[str, ...] = tuple(VIDEO_TRANSFER_SYNTAXES)
#: Image syntaxes for still and multi-frame images: native, RLE Lossless, JPEG Baseline.
IMAGE_SYNTAXES: tuple[str, ...] = (*NATIVE_SYNTAXES, RLELossless, JPEGBaseline8Bit)

_SR_CLASSES = frozenset({COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR, KEY_OBJECT_SELECTION})


def transfer_syntaxes_for(sop_class_uid: str) -> tuple[str, ...]:
    """The transfer syntaxes accepted for one SOP class.

    Parameters
    ----------
    sop_class_uid : str
        A SOP class from :data:`~dicom_io.sopclasses.INPUT_SOP_CLASSES`,
        :data:`~dicom_io.sopclasses.RESULT_SOP_CLASSES` or Verification.

    Returns
    -------
    tuple of str
        Multi-frame input classes: every video syntax plus :data:`IMAGE_SYNTAXES`;
        VL Endoscopic (single frame): :data:`IMAGE_SYNTAXES`; SR and KOS: native plus
        Deflated Explicit VR Little Endian; SEG: native plus RLE Lossless; Encapsulated PDF and
        Verification: native.

    Raises
    ------
    ValueError
        If the SOP class is not one the listener serves.
    """
    if sop_class_uid == VERIFICATION:
        return NATIVE_SYNTAXES
    if sop_class_uid == VL_ENDOSCOPIC:
        return IMAGE_SYNTAXES
    if sop_class_uid in INPUT_SOP_CLASSES:
        return (*VIDEO_SYNTAXES, *IMAGE_SYNTAXES)
    if sop_class_uid in _SR_CLASSES:
        return (*NATIVE_SYNTAXES, DeflatedExplicitVRLittleEndian)
    if sop_class_uid == ENCAPSULATED_PDF:
        return NATIVE_SYNTAXES
    if sop_class_uid == SEGMENTATION:
        return (*NATIVE_SYNTAXES, RLELossless)
    if sop_class_uid in RESULT_SOP_CLASSES:
        return IMAGE_SYNTAXES
    raise ValueError(f"sop_class_uid {sop_class_uid!r} is not a SOP class the listener serves")


def accepted_contexts() -> Iterator[tuple[str, tuple[str, ...]]]:
    """Yield ``(abstract syntax, transfer syntaxes)`` for every context the listener accepts.

    Verification first, then the storage classes in a stable (sorted) order.
    """
    yield VERIFICATION, transfer_syntaxes_for(VERIFICATION)
    for uid in sorted(INPUT_SOP_CLASSES | RESULT_SOP_CLASSES):
        yield uid, transfer_syntaxes_for(uid)
