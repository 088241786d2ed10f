"""``amagi deliveries retry``: owe failed deliveries again (e.g. after the destination's
administrator fixed what made it refuse them)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("deliveries", help="act on deliveries: send failed ones again",
                       description="Operate on the deliveries of results to destinations.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    retry = actions.add_parser(
        "retry", parents=parents, help="send failed deliveries again",
        description="Make failed deliveries (refused by the destination, e.g. a DICOMweb "
        "server's HTTP 4xx) pending again: a running 'amagi serve' sends them at once. "
        "Their last error stays recorded until they are sent.")
    retry.add_argument("--to", dest="destination", metavar="DESTINATION",
                       help="only those to this destination (AE@HOST:PORT or URL, as in "
                       "'amagi status')")
    retry.set_defaults(handler=run_retry)


def run_retry(args: argparse.Namespace, ctx) -> int:
    from db import open_database
    from db.deliveries import retry_failed

    destination = args.destination.rstrip("/") if args.destination else None
    database = open_database(ctx.config.database_url, read_only=True)
    try:
        with database.session(write=True) as s:
            n = retry_failed(s, destination)
    finally:
        database.dispose()
    ctx.print(f"{n} failed deliver{'y' if n == 1 else 'ies'} pending again"
              + (f" to {destination}" if destination else ""))
    return 0
