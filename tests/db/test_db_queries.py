"""Every ``amagi cases`` query and filter, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

import db
from db.queries import (
    CaseFilter,
    cohort_stats,
    count_cases,
    events_for_cases,
    get_case,
    iter_cases,
    list_cases,
)
from tests.db.conftest import AUTHORS, COHORT, DEMO, PARAMETERS, SPOOL, TIMINGS


def _utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


NEWEST_FIRST = ["F", "E", "D", "C", "A", "B"]

FILTERS = [
    pytest.param(CaseFilter(), NEWEST_FIRST, id="none"),
    pytest.param(CaseFilter(study_date_from=date(2024, 3, 1), study_date_to=date(2024, 4, 30)),
                 ["D", "C", "A"], id="study-date-range"),
    pytest.param(CaseFilter(study_date_from=date(2024, 4, 1)), ["E", "D", "C"],
                 id="study-date-from-inclusive"),
    pytest.param(CaseFilter(study_date_to=date(2024, 3, 5)), ["A", "B"],
                 id="study-date-to-inclusive"),
    pytest.param(CaseFilter(received_from=_utc(2024, 4, 1, 12, 0)), ["F", "E", "D", "C"],
                 id="received-from-inclusive"),
    pytest.param(CaseFilter(received_to=_utc(2024, 4, 1, 12, 0)), ["A", "B"],
                 id="received-to-exclusive"),
    pytest.param(CaseFilter(received_from=_utc(2024, 3, 1), received_to=_utc(2024, 4, 2)),
                 ["D", "C", "A"], id="received-range"),
    pytest.param(CaseFilter(min_events=2), ["D", "A"], id="min-events-2"),
    pytest.param(CaseFilter(min_events=0), ["D", "C", "A", "B"], id="min-events-0-analysed"),
    pytest.param(CaseFilter(min_total_duration_s=75.0), ["D", "A"], id="min-total-75"),
    pytest.param(CaseFilter(min_total_duration_s=75.5), ["D"], id="min-total-75.5"),
    pytest.param(CaseFilter(min_max_duration_s=0.0), ["D", "C", "A", "B"],
                 id="min-max-0-analysed"),  # C has no event, so no longest one: still in
    pytest.param(CaseFilter(min_max_duration_s=35.0), ["D", "A"], id="min-max-35"),
    pytest.param(CaseFilter(min_max_duration_s=40.0), ["A"], id="min-max-40"),
    pytest.param(CaseFilter(model=AUTHORS[0]), ["D"], id="model-name"),
    pytest.param(CaseFilter(model=DEMO[1]), ["F", "E", "C", "A", "B"], id="model-version"),
    pytest.param(CaseFilter(model="nope"), [], id="model-unknown"),
    pytest.param(CaseFilter(state="queued"), ["E"], id="state-queued"),
    pytest.param(CaseFilter(state=db.JobState.FAILED), ["F"], id="state-failed"),
    pytest.param(CaseFilter(state="done"), ["D", "C", "A", "B"], id="state-done"),
    pytest.param(CaseFilter(study_date_from=date(2024, 3, 1), study_date_to=date(2024, 4, 30),
                            min_events=2, min_max_duration_s=40.0, model=DEMO[0]), ["A"],
                 id="combined"),
]


@pytest.mark.parametrize(("flt", "expected"), FILTERS)
def test_list_filters(database, cohort, flt, expected):
    with database.session() as s:
        rows = list_cases(s, flt, limit=100)
        assert [r.case_id for r in rows] == [cohort[x] for x in expected]
        assert count_cases(s, flt) == len(expected)
        assert [r.case_id for r in iter_cases(s, flt, batch=2)] == [cohort[x] for x in expected]


def test_list_pagination_and_row_content(database, cohort):
    with database.session() as s:
        page = list_cases(s, limit=2, offset=1)
        assert [r.case_id for r in page] == [cohort["E"], cohort["D"]]
        assert list_cases(s, limit=10, offset=6) == []
        d = page[1]
    assert d.state == "done" and (d.model_name, d.model_version) == AUTHORS
    assert d.study_date == date(2024, 4, 1) and d.received_at == _utc(2024, 4, 1, 12, 5)
    assert (d.event_count, d.total_duration_s, d.max_duration_s) == (3, 76.0, 35.0)
    assert d.mean_duration_s == round(76.0 / 3, 3) and d.first_bleed_s == 20.0  # to the ms
    assert d.video_duration_s == 900.0 and d.calling_ae == "ENDO1"
    e = page[0]
    assert e.state == "queued" and e.event_count is None and e.attempts == 0


def test_list_rejects_bad_paging(database):
    with database.session() as s, pytest.raises(ValueError, match="limit"):
        list_cases(s, limit=0)


@pytest.mark.parametrize("kwargs", [{"state": "sleeping"}, {"min_events": -1},
                                    {"received_from": datetime(2024, 1, 1)}])
def test_filter_validation(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CaseFilter(**kwargs)


def test_show_by_id_sop_uid_and_study_uid(database, cohort):
    study_a = COHORT["A"][0]
    with database.session() as s:
        by_id = get_case(s, cohort["A"])
        by_str_id = get_case(s, str(cohort["A"]))
        by_sop = get_case(s, by_id.case.sop_instance_uid)
        by_study = get_case(s, study_a)
    assert by_id == by_str_id == by_sop == by_study
    assert [(e.number, e.start_s, e.end_s, e.duration_s) for e in by_id.events] == [
        (1, 10.0, 40.0, 30.0), (2, 100.0, 145.0, 45.0)]
    assert by_id.events[0].start_frame == 301 and by_id.events[0].key_frame == 751  # 1-based
    assert by_id.patient_id == "PID-A"  # this one was recorded with store_patient_id=True
    assert by_id.weights_kind == "demo-synthetic"
    assert by_id.parameters == {**PARAMETERS, "arch": "amagi_tiny"}
    assert by_id.timings == TIMINGS
    assert by_id.spool_path == f"{SPOOL}/{study_a}/{by_id.case.series_instance_uid}/" \
        f"{by_id.case.sop_instance_uid}.dcm"


def test_show_errors(database, cohort):
    with database.session() as s:
        with pytest.raises(db.AmbiguousCaseError, match="2 cases"):
            get_case(s, COHORT["C"][0])  # C and D share a study
        with pytest.raises(db.NotFoundError, match=r"9\.9\.9"):
            get_case(s, "9.9.9")
        with pytest.raises(db.NotFoundError):
            get_case(s, 99999)
        failed = get_case(s, cohort["F"])
        assert failed.case.state == "failed" and "decoder error" in failed.last_error
        assert failed.patient_id is None  # not stored unless asked
        assert failed.events == [] and failed.case.event_count is None


def test_events_for_cases(database, cohort):
    with database.session() as s:
        ev = events_for_cases(s, [cohort["D"], cohort["C"], cohort["E"]])
    assert [e.duration_s for e in ev[cohort["D"]]] == [35.0, 10.0, 31.0]
    assert [e.number for e in ev[cohort["D"]]] == [1, 2, 3]
    assert ev[cohort["C"]] == [] and ev[cohort["E"]] == []


def test_cohort_stats_all(database, cohort):
    with database.session() as s:
        st = cohort_stats(s)
    assert (st.cases, st.analysed, st.cases_with_bleeding, st.events) == (6, 4, 3, 6)
    assert st.events_per_case_mean == pytest.approx(1.5)
    assert st.events_per_case_median == pytest.approx(1.5)  # of 0, 1, 2, 3
    assert st.total_duration_mean_s == pytest.approx((75 + 3 + 0 + 76) / 4)
    assert st.total_duration_median_s == pytest.approx((3 + 75) / 2)
    assert st.total_duration_max_s == 76.0 and st.max_event_duration_s == 45.0
    assert st.first_bleed_median_s == 10.0  # of 5, 10, 20
    assert st.video_duration_total_s == 600 + 300 + 400 + 900


def test_cohort_stats_filtered_and_empty(database, cohort):
    with database.session() as s:
        st = cohort_stats(s, CaseFilter(model=AUTHORS[0]))
        none = cohort_stats(s, CaseFilter(model="nope"))
    assert (st.cases, st.analysed, st.events, st.total_duration_max_s) == (1, 1, 3, 76.0)
    assert (none.cases, none.analysed, none.events) == (0, 0, 0)
    assert none.events_per_case_mean is None and none.total_duration_median_s is None
