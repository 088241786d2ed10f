"""``amagi status``: queue depth, running jobs, failures, serve processes and deliveries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from amagi_plugin.service import pid_alive, service_health

#: A registered thread that missed this many of its heartbeats is shown as stale.
STALE_BEATS = 3


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", parents=parents, help="queue, failures and pending deliveries",
                       description="Summarise the service's database: jobs by state, running "
                       "jobs, recent failures, the listeners and workers of every amagi serve "
                       "process sharing it (stale ones marked) and deliveries still owed to "
                       "destinations.")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="output format (default: %(default)s)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.cli.table import render_table
    from db import open_database
    from db.queries import service_status
    from db.workers import list_workers

    database = open_database(ctx.config.database_url, read_only=True)
    try:
        with database.session() as s:
            st = service_status(s)
            st["workers"] = _mark_gone(list_workers(
                s, stale_after_s=STALE_BEATS * ctx.config.service.heartbeat_s,
                stale_beats=STALE_BEATS))
    finally:
        database.dispose()
    st["service"] = service_health(Path(ctx.config.var_dir))
    if args.format == "json":
        ctx.print(json.dumps(st, indent=2, default=str))
        return 0
    ctx.print(f"database: {database.url}")
    ctx.print(render_table([{"state": k, "jobs": v} for k, v in st["jobs"].items()],
                           ["state", "jobs"]))
    if st["running"]:
        ctx.print("\nrunning:")
        ctx.print(render_table(st["running"], ["job", "sop_instance_uid", "worker", "since"]))
    if st["failed"]:
        ctx.print("\nrecent failures:")
        rows = [{**r, "error": r["error"][-160:]} for r in st["failed"]]  # the cause is at the end
        ctx.print(render_table(rows, ["job", "sop_instance_uid", "attempts", "error"]))
    _print_service(ctx, st["service"])
    _print_workers(ctx, st["workers"])
    ctx.print(f"\ndeliveries pending: {st['deliveries']['pending']}, "
              f"failed: {st['deliveries']['failed']}, sent: {st['deliveries']['sent']}")
    for row in st["deliveries"]["by_destination"]:
        ctx.print(f"  {row['destination']}: {row['pending']} pending"
                  + (f", next try {row['next_attempt_at']}" if row["next_attempt_at"] else "")
                  + (f", last error: {row['last_error']}" if row["last_error"] else ""))
    for row in st["deliveries"]["failed_by_destination"]:
        ctx.print(f"  {row['destination']}: {row['failed']} failed (refused; 'amagi deliveries "
                  f"retry' sends them again), last error: {row['last_error']}")
    return 0


def _print_service(ctx, health: dict[str, Any] | None) -> None:
    from amagi_plugin.cli.table import render_table

    if health is None:
        ctx.print("\nservice: no health published (amagi serve not running here)")
        return
    state = "running" if health["running"] else "NOT RUNNING (last report " \
        f"{health['age_s']:.0f} s ago)"
    ctx.print(f"\nservice: pid {health.get('pid')}, {state}")
    workers = [{**w, "alive": "yes" if w.get("alive") else "NO"}
               for w in health.get("workers", [])]
    if workers:
        ctx.print(render_table(workers, ["name", "alive", "state", "jobs_finished", "restarts",
                                         "last_error"]))
    refused = health.get("refused_c_stores") or {}
    if refused:
        ctx.print("refused C-STOREs: " + ", ".join(f"{k}: {v}" for k, v in refused.items()))


def _mark_gone(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of this host whose process no longer exists: ``gone`` (and stale at once)."""
    import socket

    host = socket.gethostname()
    for r in rows:
        r["gone"] = r["host"] == host and not pid_alive(int(r["pid"]))
        r["stale"] = r["stale"] or r["gone"]
    return rows


def _print_workers(ctx, rows: list[dict[str, Any]]) -> None:
    from amagi_plugin.cli.table import render_table

    if not rows:
        ctx.print("\nworkers: none registered (no amagi serve running against this database)")
        return
    ctx.print("\nworkers (every amagi serve process on this database):")
    table = [{**r, "thread": r["name"].rsplit(":", 1)[-1], "device": r["device"] or "-",
              "job": r["job"] or "-", "last_heartbeat": f"{r['heartbeat_at']:%Y-%m-%d %H:%M:%S}"
              f" ({r['age_s']:.0f} s ago)",
              "state": ("GONE (process ended) " if r["gone"] else "STALE " if r["stale"] else "")
              + r["state"]} for r in rows]
    ctx.print(render_table(table, ["host", "pid", "role", "thread", "device", "state", "job",
                                   "last_heartbeat"]))
