"""``amagi status``: queue depth, running jobs, failures and pending deliveries."""

from __future__ import annotations

import argparse
import json


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

    database = open_database(ctx.config.database_url)
    try:
        with database.session() as s:
            st = service_status(s)
    finally:
        database.dispose()
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
    ctx.print(f"\ndeliveries pending: {st['deliveries']['pending']}, "
              f"failed: {st['deliveries']['failed']}, sent: {st['deliveries']['sent']}")
    for row in st["deliveries"]["by_destination"]:
        ctx.print(f"  {row['destination']}: {row['pending']} pending"
                  + (f", next try {row['next_attempt_at']}" if row["next_attempt_at"] else "")
                  + (f", last error: {row['last_error']}" if row["last_error"] else ""))
    return 0
