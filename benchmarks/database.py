"""Case store benchmark: bulk-load a synthetic cohort, then time the ``amagi cases`` queries.

Default: 100 000 cases and 1 000 000 bleeding events in a temporary SQLite file (``--url``
for another database, e.g. PostgreSQL). ``--quick``: 10 000 cases, 100 000 events.
Prints p50/p95 per query in milliseconds (each query repeated ``--repeat`` times after one
warm-up) and the ratio of each p50 to the unfiltered first page measured in the same run.
Goal: p50 < 50 ms on SQLite for filtered first pages.

    .venv/bin/python benchmarks/database.py [--quick] [--url URL] [--repeat N]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable without installing

import db
from db.queries import (
    CaseFilter,
    cohort_stats,
    events_for_cases,
    get_case,
    iter_cases,
    list_cases,
)
from db.schema import (
    AnalysisRun,
    BleedingEventRow,
    CaseIndexRow,
    Instance,
    Job,
    JobState,
    Series,
    Study,
)
from dicom_io.results import BleedingEvent, CaseIndex, WeightsKind

T0 = datetime(2023, 1, 1, tzinfo=timezone.utc)
#: Models as the service enqueues them (``ModelSpec.name``, ``ModelSpec.version``).
MODELS = [("amagi-demo-amagi_tiny", "3.0"), ("amagi_sf50", "split1_SF50"),
          ("amagi_sf50", "split2_SF50")]
#: What the service stores as each model's weights (``ModelSpec.weights``).
WEIGHTS = {"amagi-demo-amagi_tiny": WeightsKind.DEMO_SYNTHETIC, "amagi_sf50": WeightsKind.AUTHORS}
FPS = 30.0
CHUNK = 20_000


def generate(database: db.Database, n_cases: int, n_events: int, seed: int = 0) -> list[str]:
    """Bulk-insert ``n_cases`` analysed cases with ``n_events`` events in all; returns SOP UIDs."""
    rng = random.Random(seed)
    # events per case: a skewed distribution averaging n_events / n_cases
    mean = n_events / n_cases
    counts = [min(60, int(rng.expovariate(1 / mean))) for _ in range(n_cases)]
    diff = n_events - sum(counts)
    while diff:
        i = rng.randrange(n_cases)
        step = 1 if diff > 0 else -1
        if counts[i] + step >= 0:
            counts[i] += step
            diff -= step
    span_s = 2 * 365 * 86400
    studies, series, instances, jobs, runs, indices, events = [], [], [], [], [], [], []
    uids = []
    event_id = 0
    for i in range(n_cases):
        cid = i + 1
        received = T0 + timedelta(seconds=span_s * i / n_cases + rng.random())
        uid = f"2.25.{seed}.{cid}"
        uids.append(uid)
        studies.append({"id": cid, "study_instance_uid": f"{uid}.0", "created_at": received,
                        "study_date": received.date() - timedelta(days=rng.randrange(3)),
                        "study_description": rng.choice(["Gastrectomy", "Colectomy",
                                                         "Cholecystectomy"])})
        series.append({"id": cid, "study_id": cid, "series_instance_uid": f"{uid}.1",
                       "modality": "ES", "created_at": received})
        instances.append({"id": cid, "series_id": cid, "sop_instance_uid": uid,
                          "sop_class_uid": "1.2.840.10008.5.1.4.1.1.77.1.1.1",
                          "transfer_syntax_uid": "1.2.840.10008.1.2.4.102",
                          "size_bytes": rng.randrange(10**8, 10**9),
                          "spool_path": f"/spool/{uid}.dcm", "calling_ae": "ENDO1",
                          "received_at": received})
        model, version = MODELS[i % len(MODELS)]
        failed = rng.random() < 0.01
        jobs.append({"id": cid, "instance_id": cid, "model_name": model, "model_version": version,
                     "state": JobState.FAILED if failed else JobState.DONE, "attempts": 1,
                     "max_attempts": 3, "created_at": received, "updated_at": received,
                     "queued_at": received, "started_at": received, "finished_at": received})
        if failed:
            continue
        video = rng.uniform(1800, 3 * 3600)
        starts = sorted(rng.uniform(0, video - 120) for _ in range(counts[i]))
        durs = [rng.expovariate(1 / 20) for _ in starts]
        runs.append({"id": cid, "job_id": cid, "model_name": model, "model_version": version,
                     "weights_kind": WEIGHTS[model], "parameters": {"threshold": 0.5},
                     "timings": {"inference": 100.0}, "created_at": received,
                     "finished_at": received})
        found = []
        for s, d in zip(starts, durs, strict=True):
            first = round(s * FPS) + 1  # 1-based DICOM frame numbers, as the analysis gives
            last = max(first, round((s + d) * FPS))
            found.append(BleedingEvent(start_s=s, end_s=s + d, duration_s=d, start_frame=first,
                                       end_frame=last, key_frame=(first + last) // 2,
                                       peak_probability=rng.uniform(0.9, 1),
                                       mean_probability=rng.uniform(0.5, 0.9)))
        indices.append({"run_id": cid, **vars(CaseIndex.from_events(found, video))})
        for e in found:
            event_id += 1
            events.append({"id": event_id, "run_id": cid, **vars(e)})
    with database.engine.begin() as conn:
        for model, rows in ((Study, studies), (Series, series), (Instance, instances),
                            (Job, jobs), (AnalysisRun, runs), (CaseIndexRow, indices),
                            (BleedingEventRow, events)):
            for k in range(0, len(rows), CHUNK):
                conn.execute(model.__table__.insert(), rows[k:k + CHUNK])
    with database.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return uids


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """p50 and p95 in milliseconds over ``repeat`` runs (after one warm-up run)."""
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 000 cases, 100 000 events")
    ap.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    ap.add_argument("--repeat", type=int, default=30, help="timed runs per query")
    args = ap.parse_args(argv)
    n_cases, n_events = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        database = db.open_database(url)
        t = time.perf_counter()
        uids = generate(database, n_cases, n_events)
        load_s = time.perf_counter() - t
        print(f"{db.mask_url(url)}: loaded {n_cases} cases, {n_events} events in {load_s:.1f} s")
        rng = random.Random(1)
        month = CaseFilter(study_date_from=date(2024, 3, 1), study_date_to=date(2024, 3, 31))
        queries: list[tuple[str, Callable]] = [
            ("list, unfiltered (baseline)", lambda s: list_cases(s, limit=50)),
            ("list, study date in a month", lambda s: list_cases(s, month, limit=50)),
            ("list, received in a week", lambda s: list_cases(s, CaseFilter(
                received_from=datetime(2024, 6, 1, tzinfo=timezone.utc),
                received_to=datetime(2024, 6, 8, tzinfo=timezone.utc)), limit=50)),
            ("list, >= 2 events", lambda s: list_cases(s, CaseFilter(min_events=2), limit=50)),
            ("list, total >= 300 s", lambda s: list_cases(
                s, CaseFilter(min_total_duration_s=300), limit=50)),
            ("list, longest >= 120 s", lambda s: list_cases(
                s, CaseFilter(min_max_duration_s=120), limit=50)),
            ("list, model split2_SF50",
             lambda s: list_cases(s, CaseFilter(model="split2_SF50"), limit=50)),
            ("list, state failed", lambda s: list_cases(s, CaseFilter(state="failed"), limit=50)),
            ("list, month + >=2 events + longest>=30 s", lambda s: list_cases(s, CaseFilter(
                study_date_from=date(2024, 3, 1), study_date_to=date(2024, 3, 31), min_events=2,
                min_max_duration_s=30), limit=50)),
            ("list, page 100 (offset 4950)", lambda s: list_cases(s, limit=50, offset=4950)),
            ("show, by SOP Instance UID", lambda s: get_case(s, rng.choice(uids))),
            ("stats, study date in a month", lambda s: cohort_stats(s, month)),
            ("stats, all cases", lambda s: cohort_stats(s)),
            ("export page: 1000 cases + events", lambda s: events_for_cases(
                s, [r.case_id for r in itertools.islice(iter_cases(s, month), 1000)])),
        ]
        results = []
        for name, q in queries:
            def run(q=q):
                with database.session() as s:
                    return q(s)
            repeat = max(3, args.repeat // 6) if name.startswith("stats, all") else args.repeat
            results.append((name, *timed(run, repeat)))
        database.dispose()
    base = results[0][1]
    width = max(len(r[0]) for r in results)
    print(f"{'query':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  {'p50 / baseline':>14}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 14}")
    for name, p50, p95 in results:
        print(f"{name:<{width}}  {p50:8.2f}  {p95:8.2f}  {p50 / base:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
