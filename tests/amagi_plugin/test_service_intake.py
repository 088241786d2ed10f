"""The intake's series tracker: one job per single-frame series, released when complete
(Images in Acquisition) or quiet; and the intake itself on SQLite and PostgreSQL, with the
images of one series arriving on several associations at once."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest

from amagi_plugin.config import Config
from amagi_plugin.modelspec import checkpoint_spec
from amagi_plugin.service import intake as intake_module
from amagi_plugin.service.intake import Intake, SeriesProgress, SeriesTracker
from amagi_plugin.service.metrics import Metrics
from db import Database
from db.queue import job_counts, received_jobs
from db.schema import JobState
from dicom_io.net.records import StoredInstance
from dicom_io.sopclasses import VL_ENDOSCOPIC
from tests.db.conftest import database, db_url, pg_server  # noqa: F401 - fixtures (both backends)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_series_is_complete_when_its_expected_images_are_in() -> None:
    tracker = SeriesTracker(_Clock())
    assert tracker.job_of("1.2") is None
    first = tracker.add_image("1.2", 7, None)
    assert first == SeriesProgress(7, 100.0, None, 1) and not first.complete
    assert tracker.job_of("1.2") == 7
    second = tracker.add_image("1.2", 7, 3)  # a later image gives the expected count
    assert (second.expected, second.received, second.complete) == (3, 2, False)
    third = tracker.add_image("1.2", 7, None)
    assert third.complete and third.received == 3
    assert tracker.job_of("1.2") is None  # no longer tracked: a later image starts anew


def test_only_series_quiet_for_the_timeout_are_released() -> None:
    clock = _Clock()
    tracker = SeriesTracker(clock)
    tracker.add_image("a", 1, None)
    clock.now += 5
    tracker.add_image("b", 2, 10)
    clock.now += 5
    tracker.add_image("b", 2, None)  # b is still arriving
    assert tracker.pop_quiet(10.0) == [("a", 1)]
    assert tracker.pop_quiet(10.0) == []
    assert tracker.job_of("a") is None and tracker.job_of("b") == 2
    clock.now += 10
    assert tracker.pop_quiet(10.0) == [("b", 2)]


def test_an_expected_count_of_zero_never_completes_a_series() -> None:
    tracker = SeriesTracker(_Clock())
    assert not tracker.add_image("z", 3, 0).complete
    assert tracker.job_of("z") == 3


# --- the intake on a real case store: images of one series arriving side by side ----------

def _image(series: str, n: int, expected: int) -> StoredInstance:
    return StoredInstance(
        path=Path(f"/spool/1.2.3/{series}/{series}.{n}.dcm"), sop_class_uid=VL_ENDOSCOPIC,
        sop_instance_uid=f"{series}.{n}", study_instance_uid="1.2.3",
        series_instance_uid=series, transfer_syntax="1.2.840.10008.1.2.1", size_bytes=1000,
        calling_ae="SCOPE", called_ae="AMAGI", peer_address="127.0.0.1",
        association_id=f"assoc-{n}", received_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        modality="ES", instance_number=n, images_in_acquisition=expected)


def test_first_images_arriving_at_once_make_one_job_and_release_it(
        database: Database, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Each image on its own association and thread, all at once, the job's creation made
    slow: one job for the series, queued once every image is in, none left ``received``
    (a restart would queue such a job: the series analysed twice)."""
    real_enqueue = intake_module.enqueue

    def slow_enqueue(*args, **kwargs):
        time.sleep(0.05)  # widens the window between looking the series up and committing
        return real_enqueue(*args, **kwargs)

    monkeypatch.setattr(intake_module, "enqueue", slow_enqueue)
    images = 8
    queued = threading.Event()
    intake = Intake(Config(), checkpoint_spec("demo", "amagi_tiny", Path("demo.pth")),
                    Metrics(), queued)
    intake.database = database
    start = threading.Barrier(images)
    errors: list[BaseException] = []

    def receive(n: int) -> None:
        start.wait()
        try:
            intake.on_stored(_image("1.2.3.4", n, images))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=receive, args=(n,)) for n in range(images)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with database.session() as s:
        counts = job_counts(s)
        assert received_jobs(s) == []
    assert counts[JobState.QUEUED] == 1 and sum(counts.values()) == 1, counts
    assert queued.is_set() and intake.series.job_of("1.2.3.4") is None
