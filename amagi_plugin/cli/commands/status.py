"""``amagi status``: queue depth, running jobs, failures and pending deliveries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from amagi_plugin.service import service_health


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", parents=parents, help="queue, failures and pending deliveries",
                       description="Summarise the service's database: jobs by state, running "
                       "jobs, recent failures and deliveries still owed to destinations.")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="output format (default: %(default)s)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.cli.table import render_table
    from db import open_database
    from db.queries import service_status

    database = open_database(ctx.config.database_url, read_only=True)
    try:
        with database.session() as s:
            st = service_status(s)
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
