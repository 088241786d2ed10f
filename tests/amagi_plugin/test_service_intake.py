"""The intake's series tracker: one job per single-frame series, released when complete
(Images in Acquisition) or quiet."""

from __future__ import annotations

from amagi_plugin.service.intake import SeriesProgress, SeriesTracker


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
