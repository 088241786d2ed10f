"""Recording instances, runs, produced objects and deliveries (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

import db
from db import deliveries, queue, records
from db.queries import get_case, service_status
from db.schema import AnalysisRun, BleedingEventRow, Instance, Study
from dicom_io.results import BleedingEvent, CaseIndex, WeightsKind
from tests.db.conftest import DEMO, build_cohort

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _instance(s, uid="1.5.1", **kw):
    base = dict(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.4.102", study_instance_uid="1.5",
                series_instance_uid="1.5.0", size_bytes=1234, spool_path=f"/spool/{uid}")
    return records.record_instance(s, **{**base, **kw})


def test_patient_id_only_when_asked(database):
    with database.session() as s:
        _instance(s, "1.5.1", patient_id="SECRET-1")
        _instance(s, "1.5.2", study_instance_uid="1.6", series_instance_uid="1.6.0",
                  patient_id="KEEP-2", store_patient_id=True)
    with database.session() as s:
        assert s.query(Study).filter_by(study_instance_uid="1.5").one().patient_id is None
        assert s.query(Study).filter_by(study_instance_uid="1.6").one().patient_id == "KEEP-2"
        assert not hasattr(Study, "patient_name")


def test_instance_received_twice_updates_one_row(database):
    with database.session() as s:
        _instance(s, received_at=T0, calling_ae="A1")
    with database.session() as s:
        _instance(s, received_at=T0 + timedelta(hours=1), calling_ae="A2", size_bytes=99)
    with database.session() as s:
        (inst,) = s.query(Instance).all()
        assert (inst.calling_ae, inst.size_bytes, inst.received_at) == \
            ("A2", 99, T0 + timedelta(hours=1))


def _event(start_s, end_s, **kw):
    """A detected event at 30 fps (1-based frames), as the analysis gives it."""
    base = dict(start_s=start_s, end_s=end_s, duration_s=end_s - start_s,
                start_frame=round(start_s * 30) + 1, end_frame=max(1, round(end_s * 30)),
                key_frame=round(start_s * 30) + 1, peak_probability=0.8, mean_probability=0.6)
    return BleedingEvent(**{**base, **kw})


def _run(s, job, events, video_duration_s=10.0, **kw):
    return records.record_run(s, job, weights_kind=WeightsKind.DEMO_SYNTHETIC, events=events,
                              index=CaseIndex.from_events(events, video_duration_s), **kw)


def test_record_run_replaces_previous_and_validates(database):
    with database.session() as s:
        _instance(s)
        job = queue.enqueue(s, "1.5.1", model_name=DEMO[0], model_version=DEMO[1]).job_id
    ev = _event(1.0, 2.5, start_frame=31, end_frame=75, key_frame=50)
    with database.session() as s:
        _run(s, job, [ev, ev])
    with database.session() as s:
        run = _run(s, job, [ev])
        assert run.index.event_count == 1 and run.index.total_duration_s == 1.5
    with database.session() as s:
        assert s.query(BleedingEventRow).count() == 1
        with pytest.raises(ValueError, match="end_s"):
            _run(s, job, [_event(3.0, 2.0, duration_s=0.0)])
        with pytest.raises(ValueError, match="peak_probability"):
            _run(s, job, [_event(1.0, 2.0, peak_probability=1.5)])
        with pytest.raises(ValueError, match="the CaseIndex of the 1 events"):
            records.record_run(s, job, weights_kind="demo-synthetic", events=[ev],
                               index=CaseIndex.from_events([], 10.0))
        with pytest.raises(ValueError, match="weights must be one of"):
            records.record_run(s, job, weights_kind="demo", events=[],
                               index=CaseIndex.from_events([], 10.0))
        with pytest.raises(db.NotFoundError):
            _run(s, 9999, [], video_duration_s=1)


def test_the_index_is_stored_as_computed(database):
    """The database keeps the analysis' case index; an event-free case has no mean, no
    longest event and no first bleeding (NULL), and a total of 0 s."""
    with database.session() as s:
        _instance(s, "1.5.1")
        _instance(s, "1.5.2")
        full = queue.enqueue(s, "1.5.1", model_name=DEMO[0], model_version=DEMO[1]).job_id
        empty = queue.enqueue(s, "1.5.2", model_name=DEMO[0], model_version=DEMO[1]).job_id
    evs = [_event(10, 40), _event(5, 8)]
    with database.session() as s:
        _run(s, full, evs, 100.0)
        _run(s, empty, [], 50.0)
    with database.session() as s:
        ix, none = get_case(s, full).case, get_case(s, empty).case
    assert (ix.event_count, ix.total_duration_s, ix.max_duration_s, ix.first_bleed_s) == \
        (2, 33.0, 30.0, 5.0)
    assert ix.mean_duration_s == 16.5 and ix.video_duration_s == 100.0
    assert (none.event_count, none.total_duration_s, none.first_bleed_s) == (0, 0.0, None)
    assert (none.mean_duration_s, none.max_duration_s, none.video_duration_s) == (None, None, 50.0)


def test_objects_and_delivery_backoff_survive_restart(db_url):
    database = db.open_database(db_url)
    ids = build_cohort(database)
    with database.session() as s:
        run_id = s.query(AnalysisRun).filter_by(job_id=ids["A"]).one().id
        sr = records.record_object(s, run_id, kind="sr", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22",
                                   sop_instance_uid="2.25.1", path="/results/sr.dcm")
        again = records.record_object(s, run_id, kind=db.ObjectKind.SR, sop_class_uid="x",
                                      sop_instance_uid="2.25.1", path="/results/sr2.dcm")
        assert again.id == sr.id
        with pytest.raises(ValueError, match="kind"):
            records.record_object(s, run_id, kind="pdf-a", sop_class_uid="x",
                                  sop_instance_uid="2.25.2", path="/p")
        d1 = deliveries.schedule_delivery(s, sr.id, "PACS@10.0.0.1:104", now=T0).id
        d2 = deliveries.schedule_delivery(s, sr.id, "ARCH@10.0.0.2:104", now=T0).id
        assert deliveries.schedule_delivery(s, sr.id, "PACS@10.0.0.1:104").id == d1
    with database.session() as s:
        due = deliveries.deliveries_due(s, now=T0)
        assert [d.delivery_id for d in due] == [d1, d2] and due[0].path == "/results/sr2.dcm"
        deliveries.mark_sent(s, d2, now=T0)
        for _ in range(3):
            deliveries.mark_failed(s, d1, "association rejected", initial_s=30, max_s=100, now=T0)
    database.dispose()
    database = db.open_database(db_url)  # a restart: the schedule is in the database
    with database.session() as s:
        assert deliveries.deliveries_due(s, now=T0 + timedelta(seconds=99)) == []
        (due,) = deliveries.deliveries_due(s, now=T0 + timedelta(seconds=100))  # 30, 60, capped 100
        assert due.delivery_id == d1 and due.attempts == 3
        state = deliveries.mark_failed(s, d1, "again", initial_s=30, max_s=100, max_attempts=4,
                                       now=T0)
        assert state == db.DeliveryState.FAILED
        assert deliveries.deliveries_due(s, now=T0 + timedelta(days=1)) == []
        detail = get_case(s, ids["A"])
    (obj,) = detail.objects
    assert {d["destination"]: d["state"] for d in obj.deliveries} == {
        "PACS@10.0.0.1:104": "failed", "ARCH@10.0.0.2:104": "sent"}
    database.dispose()


def test_report_pdf_is_an_object_kind_and_the_database_checks_kinds(db_url):
    """Migration 0003 lets the report PDF in; the CHECK still refuses anything else."""
    database = db.open_database(db_url)
    ids = build_cohort(database)
    with database.session() as s:
        run_id = s.query(AnalysisRun).filter_by(job_id=ids["A"]).one().id
        pdf = records.record_object(s, run_id, kind="pdf",
                                    sop_class_uid="1.2.840.10008.5.1.4.1.1.104.1",
                                    sop_instance_uid="2.25.9", path="/results/report.dcm")
        pdf_id = pdf.id
    with database.session() as s:
        assert s.get(db.schema.ProducedObject, pdf_id).kind == db.ObjectKind.PDF
    with pytest.raises(sa.exc.IntegrityError), database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE produced_objects SET kind = 'bogus' WHERE id = :i"),
                     {"i": pdf_id})
    database.dispose()


def test_retry_delay_formula():
    assert [deliveries.retry_delay_s(n, 30, 3600) for n in (1, 2, 3, 8)] == [30, 60, 120, 3600]
    with pytest.raises(ValueError, match="attempts"):
        deliveries.retry_delay_s(0, 30, 60)


def test_rejected_delivery_is_failed_with_its_reason_until_retried_by_hand(db_url):
    """A destination's final refusal (HTTP 4xx) is not retried by itself; retry_failed owes
    it again, per destination or all, keeping the reason until it is sent."""
    database = db.open_database(db_url)
    ids = build_cohort(database)
    web = "https://pacs.example.org/dicom-web"
    with database.session() as s:
        run_id = s.query(AnalysisRun).filter_by(job_id=ids["A"]).one().id
        obj = records.record_object(s, run_id, kind="sr", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22",
                                    sop_instance_uid="2.25.7", path="/results/sr.dcm")
        d_web = deliveries.schedule_delivery(s, obj.id, web, now=T0).id
        d_dimse = deliveries.schedule_delivery(s, obj.id, "PACS@10.0.0.1:104", now=T0).id
        reason = f"HTTP 403 Forbidden from {web}: user amagi may not store"
        deliveries.mark_rejected(s, d_web, reason, now=T0)
        deliveries.mark_rejected(s, d_dimse, "refused", now=T0)
        assert deliveries.deliveries_due(s, now=T0 + timedelta(days=30)) == []
        st = service_status(s)
        assert st["deliveries"]["failed"] == 2
        assert {r["destination"]: (r["failed"], r["last_error"])
                for r in st["deliveries"]["failed_by_destination"]} == {
            web: (1, reason), "PACS@10.0.0.1:104": (1, "refused")}
        assert deliveries.retry_failed(s, web, now=T0) == 1
        (due,) = deliveries.deliveries_due(s, now=T0)
        assert (due.delivery_id, due.attempts) == (d_web, 1)
        assert s.get(db.schema.Delivery, d_web).last_error == reason
        assert deliveries.retry_failed(s, now=T0) == 1  # the other one
        assert deliveries.retry_failed(s, now=T0) == 0
        assert [d.delivery_id for d in deliveries.deliveries_due(s, now=T0)] == [d_web, d_dimse]
    database.dispose()


def test_commitment_report_matched_by_transaction_and_sender(db_url):
    """A report arriving on its own association finds its deliveries by Transaction UID,
    only among those sent to the AE that sent it."""
    database = db.open_database(db_url)
    ids = build_cohort(database)
    with database.session() as s:
        run_id = s.query(AnalysisRun).filter_by(job_id=ids["A"]).one().id
        objs = [records.record_object(s, run_id, kind=k, sop_class_uid="1.2.3",
                                      sop_instance_uid=f"2.25.{i}", path=f"/r/{i}.dcm")
                for i, k in enumerate(("sr", "seg", "kos"), start=20)]
        dl = [deliveries.schedule_delivery(s, o.id, "PACS@10.0.0.1:104", now=T0).id for o in objs]
        other = deliveries.schedule_delivery(s, objs[0].id, "ARCH@10.0.0.2:104", now=T0).id
        deliveries.mark_commitment_requested(s, dl, "2.25.777")
        deliveries.mark_commitment_requested(s, [other], "2.25.777")
        assert {s.get(db.schema.Delivery, d).commitment for d in dl} == {"requested"}
        assert deliveries.record_commitment_report(s, "2.25.999", {"2.25.20"}, {}) == 0
        n = deliveries.record_commitment_report(
            s, "2.25.777", {"2.25.20"}, {"2.25.21": "Failure Reason 0x0112"}, from_ae="PACS",
            now=T0)
        assert n == 3
        got = {s.get(db.schema.Delivery, d).commitment for d in dl}
        assert got == {"committed", "failed: Failure Reason 0x0112",
                       "failed: not in the commitment report"}
        assert s.get(db.schema.Delivery, other).commitment == "requested"  # ARCH's, not PACS's
        assert deliveries.record_commitment_report(s, "2.25.777", {"2.25.20"}, {},
                                                   from_ae="ARCH") == 1
        assert s.get(db.schema.Delivery, other).commitment == "committed"
    database.dispose()
