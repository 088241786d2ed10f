"""The bleeding SR (TID 1500 + TCOORD): validity, dsrdump rendering, round trip, successors."""

from __future__ import annotations

import copy
import re

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.errors import InvalidInstanceError, WriterError
from dicom_io.results import (
    DEMO_DISCLAIMER,
    AlgorithmInfo,
    BleedingEvent,
    CaseIndex,
    InvalidResultError,
    WeightsKind,
)
from dicom_io.sopclasses import COMPREHENSIVE_3D_SR
from dicom_io.sr import read_bleeding_report, write_bleeding_report
from dicom_io.validate import run_dsrdump
from tests.dicom_io._writers_fixtures import (
    AUTHORS,
    CODECS,
    DEMO,
    N_FRAMES,
    SR_KNOWN_WARNINGS,
    assert_same_patient_and_study,
    assert_valid,
    make_events,
    make_index,
    make_sources,
    only_dcm_files,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory)


@pytest.mark.integration
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("n_events", [0, 1, 3])
def test_sr_validates_and_round_trips(sources, tmp_path, codec, n_events):
    src = sources[codec]
    events = make_events(n_events)
    index = make_index(events)
    ref = write_bleeding_report(src.header, events, index, DEMO, tmp_path)

    assert ref.path == tmp_path / f"{ref.sop_instance_uid}.dcm"
    only_dcm_files(tmp_path)
    warnings = assert_valid(ref.path, SR_KNOWN_WARNINGS)
    # the TCOORD warnings appear once per event: the TCOORDs really are there
    assert sum("Referenced Time Offsets" in w for w in warnings) == n_events

    ds = dcmread(ref.path)
    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR
    assert_same_patient_and_study(ds, src.header)
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    schemes = {item.CodingSchemeDesignator: item for item in ds.CodingSchemeIdentificationSequence}
    assert schemes["99AMAGI"].CodingSchemeName == "AMAGI plugin private codes"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.header.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == src.header.SOPInstanceUID
    assert ds.SeriesDescription == DEMO_DISCLAIMER
    assert "PredecessorDocumentsSequence" not in ds

    report = read_bleeding_report(ref.path)
    assert report.events == tuple(events)
    assert report.index == index
    assert report.algorithm == DEMO
    assert report.source.sop_instance_uid == src.header.SOPInstanceUID
    assert report.source.series_instance_uid == src.header.SeriesInstanceUID
    assert report.instance == ref
    assert report.predecessors == ()


def test_numbers_are_clean_decimal_strings(sources, tmp_path):
    events = make_events(3)
    ref = write_bleeding_report(sources["h264"].header, events, make_index(events), DEMO,
                                tmp_path)
    ds = dcmread(ref.path)
    values: list[str] = []

    def walk(items):
        for item in items:
            for m in item.get("MeasuredValueSequence", []):
                values.append(m["NumericValue"].repval)
            if "ReferencedTimeOffsets" in item:
                values.extend(str(v) for v in item.ReferencedTimeOffsets)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    assert len(values) == 3 * (5 + 2) + 6  # 5 NUMs and 2 time offsets per event, 6 NUMs
    # no float noise such as "0.30000000000000004" or "1.20000000000000" in DS values
    noisy = [v for v in values if re.search(r"\d\.\d{5,}", v)]
    assert noisy == []
    assert "'0.9003'" in values  # peak probability rounded to 1e-4
    assert "'19'" in values and "'3'" in values  # frame numbers and the count are integers


@pytest.mark.parametrize("n_events", [1, 3])
def test_dsrdump_renders_tcoord_tree(sources, tmp_path, n_events):
    events = make_events(n_events)
    ref = write_bleeding_report(sources["h264"].header, events, make_index(events), AUTHORS,
                                tmp_path)
    text = run_dsrdump(ref.path)
    assert "Comprehensive 3D SR Document" in text
    tcoords = re.findall(r'<inferred from TCOORD:\(,,"Bleeding event time range"\)=\(SEGMENT,'
                         r'([0-9.]+),', text)
    assert [float(t) for t in tcoords] == [e.start_s for e in events]
    assert text.count("<selected from IMAGE:") == n_events
    assert text.count('(50960005,SCT,"Hemorrhage")') == n_events + 1
    assert '(255619001,SCT,"Total")' in text
    assert "Completion Flag     : COMPLETE" in text
    assert "Verification Flag   : UNVERIFIED" in text
    # key frames by Referenced Frame Number
    for e in events:
        assert f"(VVe image,,{e.key_frame})" in text
    # TCOORD values in full (dsrdump abbreviates them in the tree view)
    full = run_dsrdump(ref.path, extra_args=["+Pt"])  # +Pt: print template identification
    assert "TID 1500" in full


def test_authors_weights_have_no_disclaimer(sources, tmp_path):
    events = make_events(1)
    ref = write_bleeding_report(sources["uncompressed"].header, events, make_index(events),
                                AUTHORS, tmp_path)
    ds = dcmread(ref.path)
    assert DEMO_DISCLAIMER not in ds.SeriesDescription
    assert DEMO_DISCLAIMER.encode() not in ref.path.read_bytes()
    assert read_bleeding_report(ref.path).algorithm.weights is WeightsKind.AUTHORS


@pytest.mark.integration
def test_successor_names_its_predecessor(sources, tmp_path):
    src = sources["h264"].header
    first_events = make_events(1)
    first = write_bleeding_report(src, first_events, make_index(first_events), DEMO, tmp_path)
    events = make_events(3)
    series_uid, sop_uid = generate_uid(), generate_uid()
    second = write_bleeding_report(src, events, make_index(events), AUTHORS, tmp_path,
                                   predecessor=first, series_instance_uid=series_uid,
                                   sop_instance_uid=sop_uid, series_number=910)
    assert (second.series_instance_uid, second.sop_instance_uid) == (series_uid, sop_uid)
    assert_valid(second.path, SR_KNOWN_WARNINGS)
    ds = dcmread(second.path)
    pre = ds.PredecessorDocumentsSequence[0]
    assert pre.StudyInstanceUID == first.study_instance_uid
    assert pre.ReferencedSeriesSequence[0].SeriesInstanceUID == first.series_instance_uid
    assert pre.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID \
        == first.sop_instance_uid
    report = read_bleeding_report(second.path)
    assert report.predecessors == (first,)
    assert report.events == tuple(events)
    # a predecessor given as the earlier SR's header works the same
    third = write_bleeding_report(src, events, make_index(events), AUTHORS, tmp_path,
                                  predecessor=dcmread(second.path, stop_before_pixels=True))
    assert read_bleeding_report(third.path).predecessors == (second,)
    assert len({first.sop_instance_uid, second.sop_instance_uid, third.sop_instance_uid}) == 3
    assert len({first.series_instance_uid, second.series_instance_uid,
                third.series_instance_uid}) == 3


def test_events_are_sorted_by_start(sources, tmp_path):
    events = make_events(3)
    ref = write_bleeding_report(sources["h264"].header, events[::-1], make_index(events), DEMO,
                                tmp_path)
    assert read_bleeding_report(ref.path).events == tuple(events)


@pytest.mark.parametrize("kwargs, match", [
    ({"sop_instance_uid": "1.2.abc"}, "sop_instance_uid is not a valid DICOM UID"),
    ({"series_instance_uid": "../../etc"}, "series_instance_uid is not a valid DICOM UID"),
    ({"series_number": 0}, "series_number must be"),
])
def test_bad_arguments_are_rejected(sources, tmp_path, kwargs, match):
    events = make_events(1)
    with pytest.raises(InvalidResultError, match=match):
        write_bleeding_report(sources["h264"].header, events, make_index(events), DEMO,
                              tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_inputs_are_rejected(sources, tmp_path):
    src = sources["h264"].header
    events = make_events(3)
    with pytest.raises(InvalidResultError, match="event_count is 1 but 3 events"):
        write_bleeding_report(src, events, make_index(events[:1]), DEMO, tmp_path)
    late = BleedingEvent(1.0, 2.5, 1.5, 11, N_FRAMES + 5, 12, 0.9, 0.8)
    with pytest.raises(InvalidResultError, match=r"end_frame must be a frame number in \[1, 20\]"):
        write_bleeding_report(src, [late], make_index([late]), DEMO, tmp_path)
    with pytest.raises(InvalidResultError, match="algorithm must be an AlgorithmInfo"):
        write_bleeding_report(src, events, make_index(events), "AMAGI", tmp_path)
    with pytest.raises(InvalidResultError, match="out_dir is not an existing directory"):
        write_bleeding_report(src, events, make_index(events), DEMO, tmp_path / "missing")
    headless = copy.deepcopy(src)
    del headless.StudyInstanceUID
    with pytest.raises(InvalidResultError, match="lacks StudyInstanceUID"):
        write_bleeding_report(headless, events, make_index(events), DEMO, tmp_path)
    with pytest.raises(WriterError):  # InvalidResultError is a WriterError too
        write_bleeding_report(src, events, make_index(events), DEMO, tmp_path,
                              predecessor="1.2.3")


def test_reader_rejects_other_objects(sources, tmp_path):
    with pytest.raises(InvalidInstanceError, match="not a Comprehensive 3D SR"):
        read_bleeding_report(sources["h264"].path)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(InvalidInstanceError, match="cannot read"):
        read_bleeding_report(junk)


def test_event_values_are_normalised_and_validated():
    e = BleedingEvent(0.30000000000000004, 1.23456, 0.9345678, 4, 13, 6, 0.912345, 0.5)
    assert (e.start_s, e.end_s, e.duration_s, e.peak_probability) == (0.3, 1.235, 0.935, 0.9123)
    with pytest.raises(InvalidResultError, match=r"end_s .* is before start_s"):
        BleedingEvent(2.0, 1.0, 1.0, 1, 2, 1, 0.9, 0.5)
    with pytest.raises(InvalidResultError, match="key_frame 9 is outside frames 1-2"):
        BleedingEvent(0.0, 1.0, 1.0, 1, 2, 9, 0.9, 0.5)
    with pytest.raises(InvalidResultError, match="peak_probability must be finite"):
        BleedingEvent(0.0, 1.0, 1.0, 1, 2, 1, 1.5, 0.5)
    with pytest.raises(InvalidResultError, match=r"mean_probability 0\.95 exceeds"):
        BleedingEvent(0.0, 1.0, 1.0, 1, 2, 1, 0.9, 0.95)
    with pytest.raises(InvalidResultError, match="start_frame must be a 1-based frame"):
        BleedingEvent(0.0, 1.0, 1.0, 0, 2, 1, 0.9, 0.5)
    with pytest.raises(InvalidResultError, match="start_s must be a number"):
        BleedingEvent("0", 1.0, 1.0, 1, 2, 1, 0.9, 0.5)


def test_case_index_rules():
    events = make_events(3)
    index = CaseIndex.from_events(events, 2.0)
    assert index.event_count == 3
    assert index.total_duration_s == pytest.approx(sum(e.duration_s for e in events))
    assert index.max_duration_s == 0.5 and index.first_bleed_s == 0.1
    empty = CaseIndex.from_events([], 2.0)
    assert (empty.mean_duration_s, empty.max_duration_s, empty.first_bleed_s) == (None,) * 3
    with pytest.raises(InvalidResultError, match="mean_duration_s must be None"):
        CaseIndex(0, 0.0, 1.0, None, None, 2.0)
    with pytest.raises(InvalidResultError, match="first_bleed_s is required"):
        CaseIndex(1, 1.0, 1.0, 1.0, None, 2.0)
    with pytest.raises(InvalidResultError, match="event_count must be an int"):
        CaseIndex(-1, 0.0, None, None, None, 2.0)


def test_algorithm_info_rules():
    assert AlgorithmInfo("a", "1", "demo-synthetic").disclaimer == DEMO_DISCLAIMER
    assert AlgorithmInfo("a", "1", WeightsKind.USER).disclaimer is None
    with pytest.raises(InvalidResultError, match="weights must be one of"):
        AlgorithmInfo("a", "1", "imagenet")
    with pytest.raises(InvalidResultError, match="name and version must not be empty"):
        AlgorithmInfo(" ", "1")
    with pytest.raises(InvalidResultError, match="at most 64 characters"):
        AlgorithmInfo("x" * 65, "1")


def test_results_go_into_a_new_series(sources, tmp_path):
    src = sources["h264"].header
    events = make_events(1)
    with pytest.raises(InvalidResultError, match="is the source's series"):
        write_bleeding_report(src, events, make_index(events), DEMO, tmp_path,
                              series_instance_uid=src.SeriesInstanceUID)
    with pytest.raises(InvalidResultError, match="already used by the source"):
        write_bleeding_report(src, events, make_index(events), DEMO, tmp_path,
                              sop_instance_uid=src.SOPInstanceUID)


def test_failed_save_leaves_nothing_partial(sources, tmp_path):
    events = make_events(3)
    uid = generate_uid()
    (tmp_path / f"{uid}.dcm").mkdir()  # the final name cannot be replaced: rename fails
    with pytest.raises(WriterError, match=f"could not write {uid}.dcm"):
        write_bleeding_report(sources["h264"].header, events, make_index(events), DEMO,
                              tmp_path, sop_instance_uid=uid)
    assert [p.name for p in tmp_path.iterdir()] == [f"{uid}.dcm"]
