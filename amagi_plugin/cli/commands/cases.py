"""``amagi cases list|show|export|stats``: questions across analysed cases.

Filters (every subcommand but ``show``) combine with AND: study date range, reception range
(UTC), minimum event count, minimum total and longest event duration (seconds), model name or
version, job state. Output is a table by default, or CSV / JSON for other programs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from amagi_plugin.cli.table import render_csv, render_json, render_table
from amagi_plugin.errors import InputError

STATES = ("received", "queued", "running", "done", "failed")
LIST_COLUMNS = ("case_id", "received_at", "study_date", "study_description", "model_name",
                "state", "event_count", "total_duration_s", "max_duration_s", "first_bleed_s")
LIST_HEADERS = ("case", "received (UTC)", "study date", "description", "model", "state",
                "events", "total s", "max s", "first s")
TIMELINE_WIDTH = 60


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cases", help="list, show, export and summarise analysed cases",
                       description="Query the case store: one case is one received video "
                       "analysed by one model version.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    lst = actions.add_parser("list", parents=parents, help="list cases, newest first",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _filters(lst)
    _format(lst, ("table", "csv", "json"), "table")
    lst.add_argument("--limit", type=_positive_int, default=50, help="rows per page")
    lst.add_argument("--offset", type=_non_negative_int, default=0, help="rows to skip")
    lst.set_defaults(handler=run_list)

    show = actions.add_parser("show", parents=parents,
                              help="one case with its event timeline",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    show.add_argument("case", metavar="CASE",
                      help="case id, SOP Instance UID, or Study Instance UID (one case)")
    _format(show, ("table", "json"), "table")
    report = show.add_mutually_exclusive_group()
    report.add_argument("--html", action="store_true",
                        help="print the path of the case's HTML report (timeline, events, key "
                        "frames; self-contained)")
    report.add_argument("--open", action="store_true",
                        help="open the case's HTML report in the default web browser")
    show.set_defaults(handler=run_show)

    exp = actions.add_parser("export", parents=parents, help="write matching cases to CSV/JSON",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _filters(exp)
    _format(exp, ("csv", "json"), "csv")
    exp.add_argument("-o", "--output", metavar="FILE", default="-",
                     help="output file ('-': standard output)")
    exp.add_argument("--events", action="store_true",
                     help="include the events (CSV: one row per event; JSON: nested)")
    exp.set_defaults(handler=run_export)

    st = actions.add_parser("stats", parents=parents, help="cohort aggregates",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _filters(st)
    _format(st, ("table", "csv", "json"), "table")
    st.set_defaults(handler=run_stats)


def _format(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str) -> None:
    p.add_argument("--format", choices=choices, default=default, help="output format")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _parse_date(text: str) -> date:
    for fmt in ("%Y-%m-%d", "%Y%m%d"):  # ISO, or the DICOM DA form
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}")


def _parse_when(text: str) -> tuple[datetime, bool]:
    """A date or an ISO datetime (naive means UTC); the flag tells a bare date."""
    try:
        return datetime.combine(_parse_date(text), time(), timezone.utc), True
    except argparse.ArgumentTypeError:
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date or date-time (YYYY-MM-DD[THH:MM[:SS]]): {text!r}") from None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)), False


def _filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (combined with AND)")
    g.add_argument("--study-date-from", type=_parse_date, metavar="DATE",
                   help="Study Date on or after DATE (YYYY-MM-DD)")
    g.add_argument("--study-date-to", type=_parse_date, metavar="DATE",
                   help="Study Date on or before DATE")
    g.add_argument("--received-from", type=_parse_when, metavar="WHEN",
                   help="received at or after WHEN (date or ISO date-time, UTC)")
    g.add_argument("--received-to", type=_parse_when, metavar="WHEN",
                   help="received before WHEN; a bare date includes that whole day")
    g.add_argument("--min-events", type=_non_negative_int, metavar="N",
                   help="at least N bleeding events")
    g.add_argument("--min-total-duration", type=_non_negative_float, metavar="SECONDS",
                   help="total bleeding time at least SECONDS")
    g.add_argument("--min-max-duration", type=_non_negative_float, metavar="SECONDS",
                   help="longest event at least SECONDS")
    g.add_argument("--model", metavar="NAME", help="model name or model version")
    g.add_argument("--state", choices=STATES, help="job state")


def _case_filter(args: argparse.Namespace):
    from db.queries import CaseFilter

    received_to = None
    if args.received_to is not None:
        when, bare_date = args.received_to
        received_to = when + timedelta(days=1) if bare_date else when
    return CaseFilter(
        study_date_from=args.study_date_from, study_date_to=args.study_date_to,
        received_from=args.received_from[0] if args.received_from else None,
        received_to=received_to, min_events=args.min_events,
        min_total_duration_s=args.min_total_duration, min_max_duration_s=args.min_max_duration,
        model=args.model, state=args.state)


def _open(ctx):
    from db import open_database

    return open_database(ctx.config.database_url, read_only=True)


def _plain(value: Any) -> Any:
    """JSON/CSV-friendly values: ISO dates, UTC times with 'Z'."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _as_dict(obj: Any) -> dict[str, Any]:
    return _plain(dataclasses.asdict(obj))


def _short_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, datetime) else ""


def run_list(args: argparse.Namespace, ctx) -> int:
    from db.queries import CASE_COLUMNS, list_cases

    database = _open(ctx)
    try:
        with database.session() as s:
            rows = list_cases(s, _case_filter(args), limit=args.limit, offset=args.offset)
    finally:
        database.dispose()
    if args.format == "json":
        ctx.print(render_json(_as_dict(r) for r in rows))
    elif args.format == "csv":
        ctx.stdout.write(render_csv((_as_dict(r) for r in rows), CASE_COLUMNS))
    else:
        table = [{**dataclasses.asdict(r), "received_at": _short_time(r.received_at)}
                 for r in rows]
        ctx.print(render_table(table, LIST_COLUMNS, LIST_HEADERS))
        more = f"; next page: --offset {args.offset + args.limit}" if len(rows) == args.limit \
            else ""
        ctx.print(f"{len(rows)} case{'s' if len(rows) != 1 else ''} shown "
                  f"(offset {args.offset}){more}")
    return 0


def run_show(args: argparse.Namespace, ctx) -> int:
    from db.queries import get_case

    database = _open(ctx)
    try:
        with database.session() as s:
            detail = get_case(s, args.case)
    finally:
        database.dispose()
    if args.html or args.open:
        return _show_report(detail.case.case_id, args.open, ctx)
    if args.format == "json":
        ctx.print(json.dumps(_as_dict(detail), indent=2))
    else:
        ctx.print(render_case(detail))
    return 0


def _show_report(case_id: int, open_it: bool, ctx) -> int:
    """Print (and with ``open_it`` open) the HTML report ``amagi serve`` wrote for the case."""
    import webbrowser

    path = ctx.config.results_dir / f"job-{case_id}" / "report.html"
    if not path.is_file():
        raise InputError(f"case {case_id} has no HTML report at {path} (not analysed yet, or "
                         "its results were removed)")
    ctx.print(str(path))
    if open_it and not webbrowser.open(path.resolve().as_uri()):
        raise InputError(f"no web browser could be started; open {path} by hand")
    return 0


def _clock(seconds: float) -> str:
    """``H:MM:SS.s`` (or ``MM:SS.s`` under an hour) for a time in seconds."""
    minutes, sec = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{sec:04.1f}" if hours else f"{minutes:02d}:{sec:04.1f}"


def timeline_bar(events: Iterable[Any], duration_s: float, width: int = TIMELINE_WIDTH) -> str:
    """A text bar of ``width`` cells over ``[0, duration_s]``: '#' where bleeding, '-' elsewhere."""
    cells = ["-"] * width
    if duration_s > 0:
        for e in events:
            a = min(width - 1, int(e.start_s / duration_s * width))
            b = min(width - 1, max(a, int(e.end_s / duration_s * width - 1e-9)))
            for i in range(a, b + 1):
                cells[i] = "#"
    return "|" + "".join(cells) + "|"


def render_case(d) -> str:
    """The text view of ``amagi cases show``: identity, indices, timeline, objects."""
    c = d.case
    lines = [f"Case {c.case_id}: {c.state}, model {c.model_name} {c.model_version}"
             + (f" ({d.weights_kind} weights)" if d.weights_kind else "")
             + (f", attempts {c.attempts}" if c.attempts else "")]
    study = " ".join(x for x in (c.study_instance_uid, str(c.study_date or "(no date)"),
                                 c.study_description or "") if x)
    lines += [f"  study      {study}", f"  series     {c.series_instance_uid}",
              f"  instance   {c.sop_instance_uid}",
              f"  received   {_plain(c.received_at)} from {c.calling_ae or '(unknown AE)'}, "
              f"{d.size_bytes / 1e6:.1f} MB, transfer syntax {d.transfer_syntax_uid}"]
    if d.patient_id:
        lines.append(f"  patient id {d.patient_id}")
    if d.last_error:
        lines.append(f"  last error {d.last_error.splitlines()[0]}")
    if c.event_count is None:
        lines.append("  not analysed yet")
        return "\n".join(lines)
    spread = (f", mean {c.mean_duration_s:.1f} s, max {c.max_duration_s:.1f} s, first bleeding "
              f"at {_clock(c.first_bleed_s)}" if c.event_count else "")
    lines.append(f"  video      {_clock(c.video_duration_s)} ({c.video_duration_s:.1f} s); "
                 f"{c.event_count} event{'s' if c.event_count != 1 else ''}, total "
                 f"{c.total_duration_s:.1f} s{spread}")
    lines += ["", f"Timeline  0 {'─' * (TIMELINE_WIDTH - 10)} {_clock(c.video_duration_s)}",
              f"  {timeline_bar(d.events, c.video_duration_s)}"]
    for e in d.events:
        lines.append(f"  #{e.number:<3} {_clock(e.start_s)} – {_clock(e.end_s)}  "
                     f"{e.duration_s:6.1f} s  frames {e.start_frame}–{e.end_frame}  "
                     f"peak {e.peak_probability:.2f}  mean {e.mean_probability:.2f}  "
                     f"key frame {e.key_frame}")
    if not d.events:
        lines.append("  no bleeding detected")
    if d.objects:
        lines += ["", "Produced objects"]
        for o in d.objects:
            lines.append(f"  {o.kind:<9} {o.sop_instance_uid}  {o.path}")
            for dl in o.deliveries:
                lines.append(f"            → {dl['destination']}: {dl['state']} "
                             f"({dl['attempts']} attempt{'s' if dl['attempts'] != 1 else ''})"
                             + (f": {dl['last_error']}" if dl["state"] != "sent"
                                and dl["last_error"] else ""))
    return "\n".join(lines)


def run_export(args: argparse.Namespace, ctx) -> int:
    from db.queries import CASE_COLUMNS, EVENT_COLUMNS, events_for_cases, iter_cases

    out_path = None if args.output == "-" else Path(args.output)
    if out_path is not None and not out_path.parent.is_dir():
        raise InputError(f"output directory does not exist: {out_path.parent}")
    database = _open(ctx)
    try:
        with database.session() as s:
            rows = list(iter_cases(s, _case_filter(args)))
            events = events_for_cases(s, [r.case_id for r in rows]) if args.events else {}
    finally:
        database.dispose()
    if args.format == "json":
        items = []
        for r in rows:
            item = _as_dict(r)
            if args.events:
                item["events"] = [_as_dict(e) for e in events[r.case_id]]
            items.append(item)
        text = json.dumps(items, indent=2) + "\n"
    elif args.events:
        event_cols = [c for c in EVENT_COLUMNS if c != "case_id"]
        cols = [*CASE_COLUMNS, *(f"event_{c}" for c in event_cols)]
        flat = []
        for r in rows:
            base = _as_dict(r)
            for e in events[r.case_id] or [None]:
                ev = {f"event_{c}": getattr(e, c) for c in event_cols} if e else {}
                flat.append({**base, **ev})
        text = render_csv(flat, cols)
    else:
        text = render_csv((_as_dict(r) for r in rows), CASE_COLUMNS)
    _write(text, out_path, ctx.stdout)
    if out_path is not None:
        ctx.print(f"{len(rows)} case{'s' if len(rows) != 1 else ''} written to {out_path}")
    return 0


def _write(text: str, path: Path | None, stdout: TextIO) -> None:
    if path is None:
        stdout.write(text)
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}") from e


def run_stats(args: argparse.Namespace, ctx) -> int:
    from db.queries import cohort_stats

    database = _open(ctx)
    try:
        with database.session() as s:
            stats = cohort_stats(s, _case_filter(args))
    finally:
        database.dispose()
    values = dataclasses.asdict(stats)
    if args.format == "json":
        ctx.print(json.dumps(values, indent=2))
    elif args.format == "csv":
        ctx.stdout.write(render_csv([values], list(values)))
    else:
        rows = [{"statistic": k.replace("_", " "), "value": v} for k, v in values.items()]
        ctx.print(render_table(rows, ["statistic", "value"]))
    return 0
