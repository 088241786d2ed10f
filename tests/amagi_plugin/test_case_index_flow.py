"""One event type and one case index from the analysis to the SR and the case database.

The analysis finds the events and computes the index once; the SR and the database keep
both as given. An event-free case has no mean or longest duration and no first bleeding
(``None`` in Python, no measurement in the SR, ``NULL`` in the database); frame numbers are
1-based DICOM frame numbers everywhere (the video's first frame is frame 1).
"""

from __future__ import annotations

import numpy as np
import pytest

import db
from amagi_plugin.analysis import Timeline, find_events
from db import queue, records
from db.queries import get_case
from dicom_io.results import CaseIndex
from dicom_io.sr import read_bleeding_report, write_bleeding_report
from tests.dicom_io._writers_fixtures import DEMO, FPS, N_FRAMES, make_source

#: Bleeding probability per frame of the 20-frame test video (one prediction per frame).
PROBABILITIES = {
    "none": np.full(N_FRAMES, 0.1),
    # from the very first frame: frames 1-4 (peak on frame 3), then frames 11-15 (peak 14)
    "two": np.array([0.8, 0.9, 0.95, 0.7] + [0.1] * 6 + [0.6, 0.7, 0.8, 0.99, 0.9] + [0.2] * 5),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_source("uncompressed", tmp_path_factory.mktemp("flow"))


@pytest.mark.parametrize("case", sorted(PROBABILITIES))
def test_analysis_sr_and_database_agree(source, tmp_path, case):
    p = PROBABILITIES[case]
    timeline = Timeline(times_s=np.arange(N_FRAMES) / FPS, frames=np.arange(N_FRAMES),
                        rate_hz=FPS, duration_s=N_FRAMES / FPS)
    events = find_events(p, p >= 0.5, timeline)
    index = CaseIndex.from_events(events, timeline.duration_s)

    report = read_bleeding_report(write_bleeding_report(source.header, events, index, DEMO,
                                                        tmp_path).path)
    assert list(report.events) == events and report.index == index

    database = db.open_database(f"sqlite:///{tmp_path / 'amagi.db'}")
    try:
        with database.session() as s:
            records.record_instance(
                s, sop_instance_uid=source.header.SOPInstanceUID,
                sop_class_uid=source.header.SOPClassUID,
                transfer_syntax_uid=source.header.file_meta.TransferSyntaxUID,
                study_instance_uid=source.header.StudyInstanceUID,
                series_instance_uid=source.header.SeriesInstanceUID, size_bytes=1,
                spool_path=str(source.path))
            job = queue.enqueue(s, source.header.SOPInstanceUID, model_name=DEMO.name,
                                model_version=DEMO.version).job_id
            records.record_run(s, job, weights_kind=DEMO.weights, events=events, index=index)
        with database.session() as s:
            stored = get_case(s, job)
    finally:
        database.dispose()
    row = stored.case
    assert (row.event_count, row.total_duration_s, row.mean_duration_s, row.max_duration_s,
            row.first_bleed_s, row.video_duration_s) == (
        index.event_count, index.total_duration_s, index.mean_duration_s, index.max_duration_s,
        index.first_bleed_s, index.video_duration_s)
    assert [(e.start_s, e.end_s, e.duration_s, e.start_frame, e.end_frame, e.key_frame,
             e.peak_probability, e.mean_probability) for e in stored.events] == [
        (e.start_s, e.end_s, e.duration_s, e.start_frame, e.end_frame, e.key_frame,
         e.peak_probability, e.mean_probability) for e in events]
    assert stored.weights_kind == "demo-synthetic"

    if case == "none":
        assert (index.event_count, index.total_duration_s) == (0, 0.0)
        assert index.mean_duration_s is index.max_duration_s is index.first_bleed_s is None
    else:  # independent of the code under test: read off the probabilities above
        assert [(e.start_frame, e.end_frame, e.key_frame) for e in stored.events] == [
            (1, 4, 3), (11, 15, 14)]
        assert (row.event_count, row.total_duration_s, row.mean_duration_s,
                row.max_duration_s, row.first_bleed_s) == (2, 0.9, 0.45, 0.5, 0.0)
