"""Order a series of single-frame images in time and derive their frame times.

Some modalities store video as one image per frame (e.g. VL Endoscopic Image, PS3.3
A.32.1). The frames are ordered by the first temporal attribute that every instance
has, then by Instance Number (0020,0013):

1. Frame Reference Time (0054,1300), ms;
2. Acquisition DateTime (0008,002A);
3. Content Date + Content Time (0008,0023/0033);
4. Acquisition Date + Acquisition Time (0008,0022/0032).

When no attribute is present in every instance, the order is Instance Number alone and
the series has no timing.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.valuerep import DA, DT, TM

from dicom_io.errors import EmptyVideoError, InvalidInstanceError
from dicom_io.fragments import read_header
from dicom_io.timing import FrameTiming

logger = logging.getLogger(__name__)

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR, skipped in a folder


@dataclass(frozen=True)
class OrderedSeries:
    """Single-frame instances of one series, in time order.

    Attributes
    ----------
    paths : tuple of pathlib.Path
        The files, first frame first.
    headers : tuple of pydicom.Dataset
        Their headers (no pixel data), in the same order.
    timing : FrameTiming or None
        Frame times (s from the first image); ``None`` when the series has no usable
        temporal attribute.
    """

    paths: tuple[Path, ...]
    headers: tuple[Dataset, ...]
    timing: FrameTiming | None


def _seconds(ds: Dataset, key: str) -> float | None:
    """Seconds on one clock for the temporal attribute ``key``, or ``None`` if absent."""
    try:
        if key == "FrameReferenceTime":
            v = ds.get("FrameReferenceTime")
            return None if v in (None, "") else float(v) / 1000.0
        if key == "AcquisitionDateTime":
            v = ds.get("AcquisitionDateTime")
            if v in (None, ""):
                return None
            return DT(v).timestamp()
        date_kw, time_kw = {"Content": ("ContentDate", "ContentTime"),
                            "Acquisition": ("AcquisitionDate", "AcquisitionTime")}[key]
        d, t = ds.get(date_kw), ds.get(time_kw)
        if t in (None, ""):
            return None
        tm = TM(t)
        day = DA(d) if d not in (None, "") else _dt.date(1970, 1, 1)
        return _dt.datetime.combine(day, tm).timestamp()
    except (ValueError, TypeError, OverflowError):
        logger.warning("unparsable %s in one instance; not used for ordering", key)
        return None


_TEMPORAL_KEYS = ("FrameReferenceTime", "AcquisitionDateTime", "Content", "Acquisition")


def list_series_files(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
                      ) -> list[Path]:
    """The files of a series given as a directory (non-recursive) or as file paths."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise InvalidInstanceError(f"{folder}: not a directory")
        return sorted(p for p in folder.iterdir() if p.is_file())
    return [Path(p) for p in source]


def order_series(paths: Iterable[str | os.PathLike[str]], skip_non_dicom: bool = False
                 ) -> OrderedSeries:
    """Read the headers of single-frame images of one series and order them in time.

    Parameters
    ----------
    paths : iterable of path-like
        The instance files.
    skip_non_dicom : bool
        Skip files that are not DICOM images (and DICOMDIR) instead of raising; used for
        directories.

    Raises
    ------
    EmptyVideoError
        If no image is given.
    InvalidInstanceError
        If a file is not DICOM, the instances belong to several series, hold more than
        one frame, or differ in size.
    """
    items: list[tuple[Path, Dataset]] = []
    for p in map(Path, paths):
        try:
            header, pixel_offset = read_header(p)
        except InvalidInstanceError:
            if skip_non_dicom:
                logger.debug("%s: not DICOM, skipped", p)
                continue
            raise
        if header.get("SOPClassUID") == _MEDIA_STORAGE_DIRECTORY or pixel_offset is None:
            if skip_non_dicom:
                continue
            raise InvalidInstanceError(f"{p}: not an image (no Pixel Data)")
        items.append((p, header))
    if not items:
        raise EmptyVideoError("the series holds no image")
    series = {str(h.get("SeriesInstanceUID", "")) for _, h in items}
    if len(series) > 1:
        raise InvalidInstanceError(f"the files belong to {len(series)} series, expected one")
    sizes = {(int(h.get("Rows", 0)), int(h.get("Columns", 0))) for _, h in items}
    if len(sizes) > 1:
        raise InvalidInstanceError(f"the images differ in size: {sorted(sizes)} (rows, columns)")
    for p, h in items:
        if int(h.get("NumberOfFrames", 1) or 1) != 1:
            raise InvalidInstanceError(f"{p}: a series member has {h.NumberOfFrames} frames")

    instance_numbers = [int(h.get("InstanceNumber") or 0) for _, h in items]
    key_used, seconds = None, None
    for key in _TEMPORAL_KEYS:
        values = [_seconds(h, key) for _, h in items]
        if all(v is not None for v in values):
            key_used, seconds = key, [float(v) for v in values if v is not None]
            break
    if seconds is None:
        order = sorted(range(len(items)), key=lambda i: (instance_numbers[i], str(items[i][0])))
        timing = None
        logger.warning("series has no temporal attribute in every image; ordered by "
                       "Instance Number, no frame times")
    else:
        order = sorted(range(len(items)),
                       key=lambda i: (seconds[i], instance_numbers[i], str(items[i][0])))
        t = np.array([seconds[i] for i in order], dtype=np.float64)
        t -= t[0]
        if len(t) > 1 and t[-1] <= 0:
            logger.warning("all images share the same %s; no frame times", key_used)
            timing = None
        else:
            if np.any(np.diff(t) == 0):
                logger.warning("some images share the same %s; equal frame times kept",
                               key_used)
            timing = FrameTiming(t, "temporal attributes")
    return OrderedSeries(tuple(items[i][0] for i in order), tuple(items[i][1] for i in order),
                         timing)
