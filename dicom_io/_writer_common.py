"""Helpers shared by the result writers: argument checks, fresh UIDs, atomic saving."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_io import codes
from dicom_io.errors import WriterError
from dicom_io.results import (
    MANUFACTURER,
    AlgorithmInfo,
    InstanceRef,
    InvalidResultError,
    is_valid_uid,
)

logger = logging.getLogger(__name__)

#: Fallback character set of a result (PS3.3 C.12.1.1.2, UTF-8): it encodes any text.
UTF8 = "ISO_IR 192"


def result_character_set(source: Dataset) -> str | list[str] | None:
    """Specific Character Set for a result built by highdicom from ``source``.

    The source's value when highdicom accepts it; an empty or ``ISO_IR 6`` first value of
    a multi-valued one (the default repertoire, C.12.1.1.2) as ``ISO 2022 IR 6``; ``None``
    for the default repertoire alone. Any other value pydicom decodes but highdicom refuses
    (a single code-extension term, ``ISO 2022 IR 149``, pydicom's aliases) gives
    ``ISO_IR 192``: the text copied from the source was decoded already, and UTF-8 encodes
    it whatever its script.
    """
    from highdicom.valuerep import _check_specific_character_set

    raw = source.get("SpecificCharacterSet")
    if raw is None:
        return None
    values = [str(v).strip() for v in ([raw] if isinstance(raw, str) else list(raw))]
    if len(values) > 1 and values[0] in ("", "ISO_IR 6"):
        values[0] = "ISO 2022 IR 6"
    if all(v in ("", "ISO_IR 6", "ISO 2022 IR 6") for v in values):
        return None
    wanted: str | list[str] = values[0] if len(values) == 1 else values
    try:
        return _check_specific_character_set(wanted)
    except ValueError:
        logger.info("Specific Character Set %r written as %s in the results", raw, UTF8)
        return UTF8


def uid_or_new(name: str, value: str | None) -> str:
    """Return ``value`` after checking it is a valid UID (PS3.5 §9.1), or a fresh UID.

    Raises
    ------
    InvalidResultError
        When ``value`` is not a valid UID (it may become a file name).
    """
    if value is None:
        return str(generate_uid())
    if not is_valid_uid(value):
        raise InvalidResultError(f"{name} is not a valid DICOM UID: {value!r}")
    return value


def new_uids(source: Dataset, series_instance_uid: str | None,
             sop_instance_uid: str | None) -> tuple[str, str]:
    """Series and SOP Instance UIDs for a result object: checked, fresh when ``None``.

    Results go into a new series: reusing the source's series or instance UID is an error.
    """
    series = uid_or_new("series_instance_uid", series_instance_uid)
    sop = uid_or_new("sop_instance_uid", sop_instance_uid)
    if series == source.SeriesInstanceUID:
        raise InvalidResultError(f"series_instance_uid {series} is the source's series; "
                                 f"results go into a new series")
    if sop in (source.SOPInstanceUID, series):
        raise InvalidResultError(f"sop_instance_uid {sop} is already used by the source or "
                                 f"the new series")
    return series, sop


def check_positive_int(name: str, value: object, high: int = 2**31 - 1) -> int:
    """Return ``value`` if it is an int in [1, high] (IS values such as Series Number)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidResultError(f"{name} must be an int in [1, {high}], got {value!r}")
    return value


def check_source(source: object, *, image: bool = True) -> Dataset:
    """Check that ``source`` is the header of the analysed instance.

    Parameters
    ----------
    source : pydicom.Dataset
        Header read with ``stop_before_pixels=True`` (the pixel data is never needed).
    image : bool
        Also require Rows and Columns.
    """
    if not isinstance(source, Dataset):
        raise InvalidResultError(f"source must be a pydicom Dataset, got {type(source).__name__}")
    needed = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
    if image:
        needed += ["Rows", "Columns"]
    missing = [k for k in needed if not source.get(k)]
    if missing:
        raise InvalidResultError(f"source dataset lacks {', '.join(missing)}")
    for key in needed[:4]:
        if not is_valid_uid(str(source.get(key))):
            raise InvalidResultError(f"source {key} is not a valid UID: {source.get(key)!r}")
    return source


def frame_count(source: Dataset) -> int:
    """Number of frames of ``source`` (1 when Number of Frames is absent)."""
    try:
        return int(source.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as e:
        raise InvalidResultError(
            f"source NumberOfFrames is not an integer: {source.get('NumberOfFrames')!r}") from e


def check_frame_number(name: str, value: object, n_frames: int) -> int:
    """Return ``value`` if it is a 1-based frame number of a video with ``n_frames`` frames."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n_frames:
        raise InvalidResultError(f"{name} must be a frame number in [1, {n_frames}], got {value!r}")
    return value


def check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Return ``out_dir`` as a Path; it must be an existing directory."""
    path = Path(out_dir)
    if not path.is_dir():
        raise InvalidResultError(f"out_dir is not an existing directory: {str(path)!r}")
    return path


def save_atomically(ds: Dataset, out_dir: Path) -> Path:
    """Save ``ds`` as ``<SOPInstanceUID>.dcm`` in ``out_dir``; nothing partial is left.

    The file is written under a temporary name, flushed to disk and renamed.

    Raises
    ------
    WriterError
        When the file cannot be written (disk full, permissions); the temporary is removed.
    """
    uid = uid_or_new("SOPInstanceUID", str(ds.SOPInstanceUID))
    final = out_dir / f"{uid}.dcm"
    tmp = out_dir / f".{uid}.dcm.partial"
    try:
        with tmp.open("wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        tmp.unlink(missing_ok=True)
        raise WriterError(f"could not write {final.name}: {e}") from e
    logger.info("wrote %s %s", ds.get("Modality", "?"), final.name)
    return final


def instance_ref(ds: Dataset, path: Path | None = None) -> InstanceRef:
    """The :class:`InstanceRef` of ``ds``."""
    return InstanceRef(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        path=path,
    )


def reference_dataset(ref: InstanceRef | Dataset, name: str) -> Dataset:
    """A minimal header (study/series/SOP UIDs) for ``ref``, as highdicom expects evidence."""
    if isinstance(ref, Dataset):
        check_source(ref, image=False)
        return ref
    if not isinstance(ref, InstanceRef):
        raise InvalidResultError(
            f"{name} must be an InstanceRef or a pydicom Dataset, got {type(ref).__name__}")
    ds = Dataset()
    ds.StudyInstanceUID = uid_or_new(f"{name}.study_instance_uid", ref.study_instance_uid)
    ds.SeriesInstanceUID = uid_or_new(f"{name}.series_instance_uid", ref.series_instance_uid)
    ds.SOPInstanceUID = uid_or_new(f"{name}.sop_instance_uid", ref.sop_instance_uid)
    ds.SOPClassUID = uid_or_new(f"{name}.sop_class_uid", ref.sop_class_uid)
    return ds


def algorithm_equipment(algorithm: AlgorithmInfo) -> Dataset:
    """The Contributing Equipment Sequence item naming the algorithm (IHE AI Results).

    Manufacturer, Manufacturer's Model Name (algorithm name), Software Versions
    (algorithm version), Device UID (derived from the weights), Purpose of Reference
    "Processing Equipment" (DCM 109102), Contribution Date Time and Description
    (PS3.3 C.12.1, Contributing Equipment Sequence).
    """
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = algorithm.name
    item.SoftwareVersions = algorithm.version
    item.DeviceUID = algorithm.device_uid
    purpose = Dataset()
    purpose.CodeValue = codes.PROCESSING_EQUIPMENT.value
    purpose.CodingSchemeDesignator = codes.PROCESSING_EQUIPMENT.scheme_designator
    purpose.CodeMeaning = codes.PROCESSING_EQUIPMENT.meaning
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.ContributionDateTime = _dt.datetime.now().astimezone().strftime("%Y%m%d%H%M%S.%f%z")
    text = f"AI algorithm {algorithm.name} {algorithm.version} (weights: {algorithm.weights.value})"
    if algorithm.disclaimer:
        text += f"; {algorithm.disclaimer}"
    item.ContributionDescription = text
    return item


def add_algorithm_equipment(ds: Dataset, algorithm: AlgorithmInfo) -> None:
    """Name the algorithm as the equipment that made ``ds`` (IHE AI Results).

    Sets the General Equipment Manufacturer's Model Name and Software Versions to the
    algorithm's and appends :func:`algorithm_equipment` (with the Device UID) to the
    Contributing Equipment Sequence, keeping the items already there (acquisition
    equipment, libraries). The Device UID is not repeated in General Equipment: dciodvfy
    (dicom3tools 2022) does not know it there yet.
    """
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = algorithm.name
    ds.SoftwareVersions = algorithm.version
    items = list(ds.get("ContributingEquipmentSequence", []))
    items.append(algorithm_equipment(algorithm))
    ds.ContributingEquipmentSequence = items


def find_algorithm_equipment(ds: Dataset) -> Dataset | None:
    """The Contributing Equipment item written by :func:`add_algorithm_equipment`, if any."""
    for item in ds.get("ContributingEquipmentSequence", []):
        purpose = item.get("PurposeOfReferenceCodeSequence")
        if (item.get("Manufacturer") == MANUFACTURER and item.get("DeviceUID") and purpose
                and codes.same_code(purpose[0], codes.PROCESSING_EQUIPMENT)):
            return item
    return None
