"""``amagi cases`` and ``amagi db`` run in-process against SQLite and a real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import pytest

import db
from tests.db.conftest import AUTHORS, COHORT, build_cohort


@pytest.fixture
def env(db_url):
    return {"AMAGI_DATABASE_URL": db_url}


@pytest.fixture
def ids(db_url):
    database = db.open_database(db_url)
    try:
        return build_cohort(database)
    finally:
        database.dispose()


def test_db_current_and_upgrade_from_empty(run_cli, env):
    r = run_cli("db", "current", env=env)
    assert r.code == 1 and "current:  (none)" in r.stdout and "empty" in r.stdout
    r = run_cli("db", "upgrade", env=env)
    assert r.code == 0 and "upgraded from (empty) to" in r.stdout, r.stderr
    r = run_cli("db", "current", env=env)
    head = db.migrate.head_revision()
    assert r.code == 0 and f"current:  {head}" in r.stdout and "up to date" in r.stdout
    r = run_cli("db", "upgrade", env=env)
    assert r.code == 0 and f"already at revision {head}" in r.stdout


def test_db_current_does_not_create_a_missing_sqlite_file(run_cli, tmp_path):
    path = tmp_path / "nowhere" / "amagi.db"
    r = run_cli("db", "current", "--database-url", f"sqlite:///{path}")
    assert r.code == 1 and "empty" in r.stdout, (r.stdout, r.stderr)
    assert not path.exists() and not path.parent.exists()


def test_default_url_is_sqlite_under_var_dir(run_cli, tmp_path):
    r = run_cli("db", "upgrade", "--storage-var-dir", str(tmp_path / "v"))
    assert r.code == 0, r.stderr
    assert (tmp_path / "v" / "amagi.db").exists()


def test_unreachable_database_is_one_line(run_cli):
    url = "postgresql+psycopg://u:hunter2@127.0.0.1:1/x"
    for argv in (("db", "current"), ("cases", "list")):
        r = run_cli(*argv, env={"AMAGI_DATABASE_URL": url})
        assert r.code == 69  # ExitCode.UNAVAILABLE: an outage, not a failed check
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "hunter2" not in r.stderr
        assert "cannot reach database postgresql+psycopg://u:***@127.0.0.1:1/x" in lines[0]


def test_list_table_csv_json(run_cli, env, ids):
    r = run_cli("cases", "list", "--min-events", "2", env=env)
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["case", "received"]
    assert [ln.split()[0] for ln in lines[2:4]] == [str(ids["D"]), str(ids["A"])]
    assert "2 cases shown" in lines[-1]

    r = run_cli("cases", "list", "--min-events", "2", "--format", "csv", env=env)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [int(x["case_id"]) for x in rows] == [ids["D"], ids["A"]]
    assert rows[1]["total_duration_s"] == "75.0" and rows[1]["study_date"] == "2024-03-05"
    assert rows[1]["received_at"] == "2024-03-05T10:00:00Z"

    r = run_cli("cases", "list", "--format", "json", "--limit", "2", "--offset", "1", env=env)
    data = json.loads(r.stdout)
    assert [x["case_id"] for x in data] == [ids["E"], ids["D"]]
    assert data[0]["event_count"] is None and data[1]["max_duration_s"] == 35.0


@pytest.mark.parametrize(("argv", "expected"), [
    (("--study-date-from", "2024-03-01", "--study-date-to", "20240430"), ["D", "C", "A"]),
    (("--received-from", "2024-04-01T12:00", "--received-to", "2024-05-20"), ["E", "D", "C"]),
    (("--received-to", "2024-04-01T12:00:00Z"), ["A", "B"]),
    (("--min-total-duration", "75.5"), ["D"]),
    (("--min-max-duration", "40"), ["A"]),
    (("--model", AUTHORS[0]), ["D"]),
    (("--state", "failed"), ["F"]),
])
def test_list_filter_flags(run_cli, env, ids, argv, expected):
    r = run_cli("cases", "list", *argv, "--format", "json", env=env)
    assert r.code == 0, r.stderr
    assert [x["case_id"] for x in json.loads(r.stdout)] == [ids[x] for x in expected]


def test_bad_flags_are_usage_errors(run_cli, env):
    assert run_cli("cases", "list", "--study-date-from", "March", env=env).code == 2
    assert run_cli("cases", "list", "--min-events", "-1", env=env).code == 2
    assert run_cli("cases", "list", "--state", "sleeping", env=env).code == 2


def test_show_timeline_and_json(run_cli, env, ids):
    r = run_cli("cases", "show", str(ids["A"]), env=env)
    assert r.code == 0, r.stderr
    out = r.stdout
    assert f"Case {ids['A']}: done, model amagi-demo-amagi_tiny 3.0 (demo-synthetic weights)" in out
    assert "2 events, total 75.0 s" in out and "first bleeding at 00:10.0" in out
    bar = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("|"))
    assert len(bar) == 62 and bar.count("#") == 8  # 30 s + 45 s of 600 s on 60 cells
    assert bar[1 + 1] == "#" and bar[1 + 0] == "-"  # 10-40 s → cells 1..3
    assert "#1   00:10.0 – 00:40.0" in out and "#2   01:40.0 – 02:25.0" in out
    assert "patient id PID-A" in out

    r = run_cli("cases", "show", COHORT["B"][0], "--format", "json", env=env)
    data = json.loads(r.stdout)
    assert data["case"]["case_id"] == ids["B"] and data["patient_id"] is None
    assert [(e["start_s"], e["end_s"]) for e in data["events"]] == [(5.0, 8.0)]
    assert data["weights_kind"] == "demo-synthetic"

    r = run_cli("cases", "show", str(ids["C"]), env=env)  # analysed, no event
    assert r.code == 0 and "0 events, total 0.0 s\n" in r.stdout and "no bleeding" in r.stdout
    r = run_cli("cases", "show", str(ids["C"]), "--format", "json", env=env)
    case = json.loads(r.stdout)["case"]
    assert (case["event_count"], case["mean_duration_s"], case["max_duration_s"]) == (0, None, None)

    r = run_cli("cases", "show", COHORT["C"][0], env=env)  # C and D share the study
    assert r.code == 3 and "2 cases" in r.stderr
    r = run_cli("cases", "show", "1.2.3.4.5", env=env)
    assert r.code == 3 and "no case" in r.stderr
    r = run_cli("cases", "show", str(ids["E"]), env=env)
    assert r.code == 0 and "not analysed yet" in r.stdout


def test_export_csv_json_with_events(run_cli, env, ids, tmp_path):
    out = tmp_path / "cases.csv"
    r = run_cli("cases", "export", "--events", "--state", "done", "-o", str(out), env=env)
    assert r.code == 0, r.stderr
    assert "4 cases written" in r.stdout
    rows = list(csv.DictReader(out.open()))
    by_case: dict[int, list[dict]] = {}
    for row in rows:
        by_case.setdefault(int(row["case_id"]), []).append(row)
    assert {k: len(v) for k, v in by_case.items()} == {ids["A"]: 2, ids["B"]: 1, ids["C"]: 1,
                                                       ids["D"]: 3}
    assert by_case[ids["C"]][0]["event_start_s"] == ""  # no event: one row, empty event fields
    assert [float(x["event_duration_s"]) for x in by_case[ids["D"]]] == [35.0, 10.0, 31.0]

    r = run_cli("cases", "export", "--format", "json", "--events", "--min-events", "1", env=env)
    data = json.loads(r.stdout)
    assert [x["case_id"] for x in data] == [ids["D"], ids["A"], ids["B"]]
    assert [e["number"] for e in data[0]["events"]] == [1, 2, 3]

    r = run_cli("cases", "export", env=env)
    assert len(list(csv.DictReader(io.StringIO(r.stdout)))) == 6
    r = run_cli("cases", "export", "-o", str(tmp_path / "missing" / "x.csv"), env=env)
    assert r.code == 3 and "does not exist" in r.stderr


def test_stats_three_formats(run_cli, env, ids):
    r = run_cli("cases", "stats", "--format", "json", env=env)
    assert r.code == 0, r.stderr
    st = json.loads(r.stdout)
    assert (st["cases"], st["analysed"], st["cases_with_bleeding"], st["events"]) == (6, 4, 3, 6)
    assert st["total_duration_median_s"] == 39.0 and st["max_event_duration_s"] == 45.0
    r = run_cli("cases", "stats", "--format", "csv", "--model", AUTHORS[0], env=env)
    (row,) = list(csv.DictReader(io.StringIO(r.stdout)))
    assert row["cases"] == "1" and row["events"] == "3" and row["total_duration_max_s"] == "76.0"
    r = run_cli("cases", "stats", env=env)
    table = {ln.rsplit(None, 1)[0].strip(): ln.rsplit(None, 1)[1]
             for ln in r.stdout.splitlines()[2:]}
    assert table["cases with bleeding"] == "3" and table["events per case median"] == "1.5"
