"""``amagi jobs retry ID``: queue a failed job again by hand (e.g. after fixing the cause)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("jobs", help="act on analysis jobs: retry a failed one",
                       description="Operate on the job queue of the case store.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    retry = actions.add_parser(
        "retry", parents=parents, help="queue failed jobs again with fresh attempts",
        description="Queue failed jobs again: their attempts start over and a running "
        "'amagi serve' picks them up. Jobs that are not failed are left alone (exit 3).")
    retry.add_argument("job_ids", nargs="+", type=int, metavar="ID",
                       help="job number (as in 'amagi status' and 'amagi cases list')")
    retry.set_defaults(handler=run_retry)


def run_retry(args: argparse.Namespace, ctx) -> int:
    from db import open_database
    from db.queue import requeue

    database = open_database(ctx.config.database_url, read_only=True)
    try:
        for job_id in args.job_ids:
            with database.session(write=True) as s:
                state = requeue(s, job_id, max_attempts=ctx.config.worker.max_attempts)
            ctx.print(f"job {job_id}: {state.value}")
    finally:
        database.dispose()
    return 0
