"""Frames of pydicom-decodable instances: multi-frame native/RLE/JPEG Baseline, single images.

Multi-frame instances are read one frame at a time with :func:`pydicom.pixels.iter_pixels`
(the file is never loaded whole); single-frame series read one file per frame. Every
frame is returned as RGB ``uint8 (H, W, 3)``: YBR is converted by pydicom (PS3.3
C.7.6.3.1.2), monochrome is replicated to three channels, palette colour is looked up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_color_lut, iter_pixels, pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicom_io.errors import VideoDecodeError

logger = logging.getLogger(__name__)

#: Transfer syntaxes decoded through pydicom (DESIGN.md §4): native, RLE, JPEG Baseline.
PIXEL_TRANSFER_SYNTAXES = frozenset({
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit,
})


def to_rgb(arr: np.ndarray, header: Dataset) -> np.ndarray:
    """Convert one decoded frame to RGB ``uint8 (H, W, 3)``.

    Parameters
    ----------
    arr : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` as returned by pydicom (YBR already converted to RGB).
    header : pydicom.Dataset
        The instance's Image Pixel attributes.
    """
    photometric = str(header.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, header)
        if arr.dtype != np.uint8:  # 16-bit LUT entries
            arr = (arr >> 8).astype(np.uint8)
    if arr.dtype != np.uint8:
        bits = int(header.get("BitsStored", 8) or 8)
        wide = arr.astype(np.int64)
        if arr.dtype.kind == "i":
            wide += 1 << (bits - 1)
        arr = np.clip(wide >> max(0, bits - 8), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        if photometric == "MONOCHROME1":
            arr = 255 - arr
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def iter_multiframe(path: str | os.PathLike[str], header: Dataset, indices: Sequence[int]
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for the 0-based frame ``indices`` of a multi-frame instance.

    Raises
    ------
    VideoDecodeError
        If pydicom cannot decode a frame (corrupt RLE/JPEG data, pixel data too short).
    """
    if not indices:
        return
    frames = iter_pixels(path, indices=list(indices))
    pos = 0
    while pos < len(indices):
        try:
            arr = next(frames)
        except StopIteration:
            raise VideoDecodeError(f"{path}: pixel data ended at frame {indices[pos]}") from None
        except Exception as e:  # pydicom/pillow raise many types for bad data
            raise VideoDecodeError(
                f"{path}: cannot decode frame {indices[pos]} ({type(e).__name__}: {e})") from e
        yield indices[pos], to_rgb(arr, header)
        pos += 1


def read_single(path: Path, header: Dataset) -> np.ndarray:
    """Decode the one frame of a single-frame image as RGB ``uint8 (H, W, 3)``."""
    try:
        arr = pixel_array(path)
    except Exception as e:  # pydicom/pillow raise many types for bad data
        raise VideoDecodeError(f"{path}: cannot decode the image ({type(e).__name__}: {e})"
                               ) from e
    return to_rgb(arr, header)
