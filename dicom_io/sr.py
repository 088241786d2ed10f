"""The bleeding report: Comprehensive 3D SR, TID 1500 Measurement Report (PS3.16).

Content tree written by :func:`write_bleeding_report`::

    CONTAINER Imaging Measurement Report (TID 1500)
      ... observer context (device), procedure reported (Endoscopy)
      CONTAINER Imaging Measurements
        CONTAINER Measurement Group (TID 1501)           one per bleeding event
          tracking identifier, Finding = Hemorrhage, algorithm (TID 4019)
          NUM Duration [s]
            INFERRED FROM TCOORD SEGMENT [start_s, end_s]   (template extension)
              SELECTED FROM IMAGE  the video
          NUM first frame, last frame [{frame}]; peak, mean probability [1]
          IMAGE Source  the video, Referenced Frame Number = key frame
        CONTAINER Measurement Group (TID 1501)           case summary
          NUM event count [{events}]; Duration [s] with Derivation Total / Mean /
          Maximum; time to first bleeding [s]; analysed video duration [s]
          IMAGE Source  the video

:func:`read_bleeding_report` reads such a document back into the
:mod:`dicom_io.results` dataclasses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io import codes
from dicom_io._writer_common import (
    MANUFACTURER,
    add_algorithm_equipment,
    check_frame_number,
    check_out_dir,
    check_positive_int,
    check_source,
    find_algorithm_equipment,
    frame_count,
    instance_ref,
    new_uids,
    reference_dataset,
    result_character_set,
    save_atomically,
)
from dicom_io.errors import InvalidInstanceError
from dicom_io.results import (
    AlgorithmInfo,
    BleedingEvent,
    BleedingReport,
    CaseIndex,
    InstanceRef,
    InvalidResultError,
)
from dicom_io.sopclasses import COMPREHENSIVE_3D_SR

logger = logging.getLogger(__name__)

DEFAULT_SERIES_NUMBER = 900
SERIES_DESCRIPTION = "AMAGI bleeding report"
_WEIGHTS_PREFIX = "weights="
_DESCRIPTION_PREFIX = "description="
_NOTE_PREFIX = "note="
# Concept names fixed by highdicom's templates (PS3.16 TID 1500/1501/4019)
_IMAGING_MEASUREMENTS = Code("126010", "DCM", "Imaging Measurements")
_MEASUREMENT_GROUP = Code("125007", "DCM", "Measurement Group")
_DERIVATION = Code("121401", "DCM", "Derivation")
_ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
_ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
_ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")


def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    params = [f"{_WEIGHTS_PREFIX}{algorithm.weights.value}"]
    if algorithm.description:
        params.append(f"{_DESCRIPTION_PREFIX}{algorithm.description}")
    if algorithm.disclaimer:
        params.append(f"{_NOTE_PREFIX}{algorithm.disclaimer}")
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, parameters=params,
        family=codes.ARTIFICIAL_INTELLIGENCE, manufacturer=MANUFACTURER)


def _num(name: Code, value: float | int, unit: Code,
         derivation: Code | None = None) -> hd.sr.Measurement:
    measurement = hd.sr.Measurement(name=name, value=value, unit=unit, derivation=derivation)
    if isinstance(value, int):  # highdicom formats every value as a float ("4.0")
        measurement[0].MeasuredValueSequence[0].NumericValue = str(value)
    return measurement


def _image(source: Dataset, frames: Sequence[int] | None, relationship: str | None = None,
           ) -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(
        name=codes.SOURCE, referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=list(frames) if frames else None,
        relationship_type=relationship)


def _event_group(i: int, event: BleedingEvent, source: Dataset,
                 algorithm: AlgorithmInfo) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    duration = _num(codes.DURATION, event.duration_s, codes.SECOND)
    # TCOORD is not a row of TID 1501/300: a template extension (PS3.16 §6.4), allowed by
    # the Comprehensive 3D SR relationship constraints (NUM INFERRED FROM TCOORD).
    tcoord = hd.sr.TcoordContentItem(
        name=codes.EVENT_TIME_RANGE, temporal_range_type="SEGMENT",
        referenced_time_offsets=[event.start_s, event.end_s], relationship_type="INFERRED FROM")
    tcoord.ContentSequence = hd.sr.ContentSequence([_image(source, None, "SELECTED FROM")])
    num_item = duration[0]
    if "ContentSequence" not in num_item:
        num_item.ContentSequence = hd.sr.ContentSequence()
    num_item.ContentSequence.append(tcoord)
    measurements = [
        duration,
        _num(codes.EVENT_START_FRAME, event.start_frame, codes.FRAME_UNIT),
        _num(codes.EVENT_END_FRAME, event.end_frame, codes.FRAME_UNIT),
        _num(codes.PEAK_PROBABILITY, event.peak_probability, codes.NO_UNITS),
        _num(codes.MEAN_PROBABILITY, event.mean_probability, codes.NO_UNITS),
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                     identifier=f"Bleeding event {i}"),
        finding_category=codes.MORPHOLOGICALLY_ALTERED_STRUCTURE,
        finding_type=codes.HEMORRHAGE,
        algorithm_id=_algorithm_id(algorithm),
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            source.SOPClassUID, source.SOPInstanceUID, [event.key_frame])],
    )


def _case_group(index: CaseIndex, source: Dataset,
                algorithm: AlgorithmInfo) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [
        _num(codes.EVENT_COUNT, index.event_count, codes.EVENTS_UNIT),
        _num(codes.DURATION, index.total_duration_s, codes.SECOND, codes.TOTAL),
    ]
    if index.mean_duration_s is not None:
        measurements.append(_num(codes.DURATION, index.mean_duration_s, codes.SECOND, codes.MEAN))
    if index.max_duration_s is not None:
        measurements.append(_num(codes.DURATION, index.max_duration_s, codes.SECOND,
                                 codes.MAXIMUM))
    if index.first_bleed_s is not None:
        measurements.append(_num(codes.TIME_TO_FIRST_BLEEDING, index.first_bleed_s,
                                 codes.SECOND))
    measurements.append(_num(codes.ANALYSED_DURATION, index.video_duration_s, codes.SECOND))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                     identifier="Case summary"),
        finding_category=codes.MORPHOLOGICALLY_ALTERED_STRUCTURE,
        finding_type=codes.HEMORRHAGE,
        algorithm_id=_algorithm_id(algorithm),
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            source.SOPClassUID, source.SOPInstanceUID)],
    )


def _check_events(events: Sequence[BleedingEvent], index: CaseIndex, source: Dataset,
                  ) -> list[BleedingEvent]:
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise InvalidResultError(f"events must be a sequence of BleedingEvent, got {events!r}")
    for i, e in enumerate(events):
        if not isinstance(e, BleedingEvent):
            raise InvalidResultError(f"events[{i}] must be a BleedingEvent, got {e!r}")
    if not isinstance(index, CaseIndex):
        raise InvalidResultError(f"index must be a CaseIndex, got {index!r}")
    if index.event_count != len(events):
        raise InvalidResultError(
            f"index.event_count is {index.event_count} but {len(events)} events were given")
    n_frames = frame_count(source)
    for i, e in enumerate(events):
        check_frame_number(f"events[{i}].end_frame", e.end_frame, n_frames)
    return sorted(events, key=lambda e: (e.start_s, e.start_frame))


def write_bleeding_report(
    source: Dataset,
    events: Sequence[BleedingEvent],
    index: CaseIndex,
    algorithm: AlgorithmInfo,
    out_dir: str | os.PathLike[str],
    *,
    predecessor: InstanceRef | Dataset | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
    institution_name: str | None = None,
) -> InstanceRef:
    """Write the bleeding report of one video as a Comprehensive 3D SR (TID 1500).

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the analysed video (``stop_before_pixels=True`` is enough); patient and
        study are copied from it and the SR goes into its study.
    events : sequence of BleedingEvent
        The events (any order; written sorted by start time); may be empty.
    index : CaseIndex
        Case-level indices; ``index.event_count`` must equal ``len(events)``.
    algorithm : AlgorithmInfo
        Algorithm identification (TID 4019) written in every measurement group.
    out_dir : path-like
        Existing directory; the file is ``<SOPInstanceUID>.dcm``.
    predecessor : InstanceRef or pydicom.Dataset, optional
        An earlier report of the same video that this one supersedes; it is named in
        Predecessor Documents Sequence (PS3.3 C.17.2.3).
    series_instance_uid, sop_instance_uid : str, optional
        UIDs for the new series and instance; fresh UIDs when omitted.
    series_number, instance_number : int
        Series and Instance Number.
    institution_name : str, optional
        Institution Name of the creating device.

    Returns
    -------
    InstanceRef
        Identity and path of the written SR.

    Raises
    ------
    InvalidResultError
        On invalid arguments (message names the argument).
    WriterError
        When building or saving the document fails.
    """
    source = check_source(source, image=False)
    events = _check_events(events, index, source)
    if not isinstance(algorithm, AlgorithmInfo):
        raise InvalidResultError(f"algorithm must be an AlgorithmInfo, got {algorithm!r}")
    out = check_out_dir(out_dir)
    series_uid, sop_uid = new_uids(source, series_instance_uid, sop_instance_uid)
    check_positive_int("series_number", series_number)
    check_positive_int("instance_number", instance_number)
    previous = None if predecessor is None else [reference_dataset(predecessor, "predecessor")]
    if previous and str(previous[0].SOPInstanceUID) == sop_uid:
        raise InvalidResultError(f"predecessor is the report itself ({sop_uid})")

    groups = [_event_group(i, e, source, algorithm) for i, e in enumerate(events, 1)]
    groups.append(_case_group(index, source, algorithm))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid, name=algorithm.name, manufacturer_name=MANUFACTURER,
        model_name=algorithm.name)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(Code("121007", "DCM", "Device")),
        observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.ENDOSCOPY,
        imaging_measurements=groups, title=codes.IMAGING_MEASUREMENT_REPORT)
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source], content=report[0], series_instance_uid=series_uid,
            series_number=series_number, sop_instance_uid=sop_uid,
            instance_number=instance_number, manufacturer=MANUFACTURER,
            is_complete=True, is_final=False, is_verified=False,
            institution_name=institution_name, previous_versions=previous,
            series_description=algorithm.disclaimer or SERIES_DESCRIPTION,
            specific_character_set=result_character_set(source),
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidResultError(f"could not build the bleeding SR: {e}") from e
    scheme_items = list(sr.get("CodingSchemeIdentificationSequence", []))
    scheme_items.append(codes.private_scheme_item())
    sr.CodingSchemeIdentificationSequence = scheme_items
    add_algorithm_equipment(sr, algorithm)
    path = save_atomically(sr, out)
    logger.info("bleeding SR with %d events for %s", len(events), source.SOPInstanceUID)
    return instance_ref(sr, path)


# ----------------------------------------------------------------------------- reading
def _name(item: Dataset) -> Dataset | None:
    seq = item.get("ConceptNameCodeSequence")
    return seq[0] if seq else None


def _children(item: Dataset, code: Code | None = None, value_type: str | None = None,
              ) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", [])
            if (code is None or codes.same_code(_name(c), code))
            and (value_type is None or c.get("ValueType") == value_type)]


def _one(items: list[Dataset], what: str) -> Dataset:
    if len(items) != 1:
        raise InvalidInstanceError(f"bleeding SR: expected one {what}, found {len(items)}")
    return items[0]


def _value(num: Dataset) -> float:
    return float(num.MeasuredValueSequence[0].NumericValue)


def _nums(group: Dataset, code: Code, derivation: Code | None = None) -> list[float]:
    found = []
    for num in _children(group, code, "NUM"):
        derivations = [c.ConceptCodeSequence[0] for c in _children(num, _DERIVATION, "CODE")]
        if (derivation is None and not derivations) or (
                derivation is not None and any(codes.same_code(d, derivation)
                                               for d in derivations)):
            found.append(num)
    return [_value(n) for n in found]


def _opt(values: list[float], what: str) -> float | None:
    if len(values) > 1:
        raise InvalidInstanceError(f"bleeding SR: more than one {what}")
    return values[0] if values else None


def _algorithm(group: Dataset, device_uid: str | None) -> AlgorithmInfo:
    name = _one(_children(group, _ALGORITHM_NAME, "TEXT"), "algorithm name").TextValue
    version = _one(_children(group, _ALGORITHM_VERSION, "TEXT"), "algorithm version").TextValue
    weights, description = None, ""
    for p in _children(group, _ALGORITHM_PARAMETERS, "TEXT"):
        text = str(p.TextValue)
        if text.startswith(_WEIGHTS_PREFIX):
            weights = text[len(_WEIGHTS_PREFIX):]
        elif text.startswith(_DESCRIPTION_PREFIX):
            description = text[len(_DESCRIPTION_PREFIX):]
    if weights is None:
        raise InvalidInstanceError("bleeding SR: algorithm parameters lack the weights kind")
    return AlgorithmInfo(str(name), str(version), weights, description, device_uid)


def _event(group: Dataset) -> BleedingEvent:
    duration = _one([n for n in _children(group, codes.DURATION, "NUM")
                     if not _children(n, _DERIVATION)], "event duration")
    tcoord = _one(_children(duration, codes.EVENT_TIME_RANGE, "TCOORD"), "event time range")
    if tcoord.get("TemporalRangeType") != "SEGMENT" or len(tcoord.ReferencedTimeOffsets) != 2:
        raise InvalidInstanceError("bleeding SR: event time range is not a 2-point SEGMENT")
    start_s, end_s = (float(v) for v in tcoord.ReferencedTimeOffsets)
    key = _one(_children(group, codes.SOURCE_OF_MEASUREMENT, "IMAGE"), "key frame image")
    frames = key.ReferencedSOPSequence[0].get("ReferencedFrameNumber")
    if frames is None:
        raise InvalidInstanceError("bleeding SR: key frame image has no Referenced Frame Number")
    key_frame = int(frames[0] if isinstance(frames, Sequence) else frames)

    def num(code: Code, what: str) -> float:
        value = _opt(_nums(group, code), what)
        if value is None:
            raise InvalidInstanceError(f"bleeding SR: event lacks {what}")
        return value

    return BleedingEvent(
        start_s=start_s, end_s=end_s, duration_s=_value(duration),
        start_frame=int(num(codes.EVENT_START_FRAME, "first frame")),
        end_frame=int(num(codes.EVENT_END_FRAME, "last frame")), key_frame=key_frame,
        peak_probability=num(codes.PEAK_PROBABILITY, "peak probability"),
        mean_probability=num(codes.MEAN_PROBABILITY, "mean probability"))


def _index(group: Dataset) -> CaseIndex:
    count = _opt(_nums(group, codes.EVENT_COUNT), "event count")
    total = _opt(_nums(group, codes.DURATION, codes.TOTAL), "total duration")
    video = _opt(_nums(group, codes.ANALYSED_DURATION), "video duration")
    if count is None or total is None or video is None:
        raise InvalidInstanceError("bleeding SR: case summary lacks count, total or video "
                                   "duration")
    return CaseIndex(
        event_count=int(count), total_duration_s=total,
        mean_duration_s=_opt(_nums(group, codes.DURATION, codes.MEAN), "mean duration"),
        max_duration_s=_opt(_nums(group, codes.DURATION, codes.MAXIMUM), "max duration"),
        first_bleed_s=_opt(_nums(group, codes.TIME_TO_FIRST_BLEEDING), "first bleed time"),
        video_duration_s=video)


def _references(seq: Sequence[Dataset]) -> list[InstanceRef]:
    refs = []
    for study in seq:
        for series in study.ReferencedSeriesSequence:
            for sop in series.ReferencedSOPSequence:
                refs.append(InstanceRef(str(study.StudyInstanceUID),
                                        str(series.SeriesInstanceUID),
                                        str(sop.ReferencedSOPInstanceUID),
                                        str(sop.ReferencedSOPClassUID)))
    return refs


def read_bleeding_report(path: str | os.PathLike[str]) -> BleedingReport:
    """Read a report written by :func:`write_bleeding_report` back into dataclasses.

    Parameters
    ----------
    path : path-like
        The SR file.

    Returns
    -------
    BleedingReport
        Events (sorted by start), case index, algorithm, the video, the SR itself and its
        predecessors.

    Raises
    ------
    InvalidInstanceError
        When the file is not one of our bleeding reports.
    """
    path = Path(path)
    try:
        ds = dcmread(path)
    except (OSError, InvalidDicomError) as e:
        raise InvalidInstanceError(f"cannot read {path}: {e}") from e
    if ds.get("SOPClassUID") != COMPREHENSIVE_3D_SR:
        raise InvalidInstanceError(f"{path.name} is not a Comprehensive 3D SR "
                                   f"(SOP class {ds.get('SOPClassUID')})")
    template = ds.get("ContentTemplateSequence")
    if not template or template[0].get("TemplateIdentifier") != "1500":
        raise InvalidInstanceError(f"{path.name} is not a TID 1500 Measurement Report")
    try:
        measurements = _one(_children(ds, _IMAGING_MEASUREMENTS, "CONTAINER"),
                            "Imaging Measurements container")
        groups = _children(measurements, _MEASUREMENT_GROUP, "CONTAINER")
        case = _one([g for g in groups if _children(g, codes.EVENT_COUNT)], "case summary")
        events = [_event(g) for g in groups if g is not case]
        index = _index(case)
        equipment = find_algorithm_equipment(ds)
        algorithm = _algorithm(case, str(equipment.DeviceUID) if equipment else None)
        image = _one(_children(case, codes.SOURCE_OF_MEASUREMENT, "IMAGE"),
                     "case source image")
        sop = image.ReferencedSOPSequence[0]
        video = [r for r in _references(ds.get("CurrentRequestedProcedureEvidenceSequence", []))
                 if r.sop_instance_uid == sop.ReferencedSOPInstanceUID]
        source = _one(video, "evidence entry for the video")
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        raise InvalidInstanceError(f"{path.name}: malformed bleeding report: {e}") from e
    if index.event_count != len(events):
        raise InvalidInstanceError(f"{path.name}: event count {index.event_count} but "
                                   f"{len(events)} event groups")
    return BleedingReport(
        events=tuple(sorted(events, key=lambda e: (e.start_s, e.start_frame))),
        index=index, algorithm=algorithm, source=source,
        instance=instance_ref(ds, path),
        predecessors=tuple(_references(ds.get("PredecessorDocumentsSequence", []))))
