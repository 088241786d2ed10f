"""``amagi db upgrade|current``: the case store's schema revision, for operators."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="case store schema: upgrade, current revision",
                       description="Manage the case store's schema (Alembic migrations). The "
                       "service upgrades it automatically at start; these are for operators.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", parents=parents, help="apply pending migrations",
                            description="Create the database or apply pending migrations.")
    up.add_argument("--revision", default="head", help="target revision (default: %(default)s)")
    up.set_defaults(handler=run_upgrade)
    cur = actions.add_parser("current", parents=parents,
                             help="show the database revision and the code's head revision",
                             description="Show the schema revision; exit status 1 when the "
                             "database is empty or not at the head revision.")
    cur.set_defaults(handler=run_current)


def run_upgrade(args: argparse.Namespace, ctx) -> int:
    from db import mask_url, migrate

    url = ctx.config.database_url
    before, head = migrate.status(url)
    after = migrate.upgrade(url, args.revision)
    if before == after:
        ctx.print(f"{mask_url(url)}: already at revision {after}")
    else:
        ctx.print(f"{mask_url(url)}: upgraded from {before or '(empty)'} to {after}"
                  + (" (head)" if after == head else ""))
    return 0


def run_current(args: argparse.Namespace, ctx) -> int:
    from db import mask_url, migrate

    url = ctx.config.database_url
    current, head = migrate.status(url)
    state = ("up to date" if current == head else
             "empty (run 'amagi db upgrade')" if current is None else
             "needs upgrade (run 'amagi db upgrade')")
    ctx.print(f"database: {mask_url(url)}")
    ctx.print(f"current:  {current or '(none)'}")
    ctx.print(f"head:     {head}")
    ctx.print(f"status:   {state}")
    return 0 if current == head else 1
