"""``amagi config show|template``: the effective configuration and where each value came from."""

from __future__ import annotations

import argparse
import json

from amagi_plugin.cli.table import render_table
from amagi_plugin.config import keys, render_value, template


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="show the effective configuration",
                       description="Show the effective configuration or print a commented template.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", parents=parents, help="effective values and their origin")
    show.add_argument("--format", choices=("table", "json"), default="table",
                      help="output format (default: %(default)s)")
    show.set_defaults(handler=run_show)
    tpl = actions.add_parser("template", parents=parents,
                             help="print a commented TOML file with every key and its default")
    tpl.set_defaults(handler=run_template)


def run_show(args: argparse.Namespace, ctx) -> int:
    # Imported here, not with the module: every command's parser is built at start, and the
    # db package pulls in alembic, which the demo build's stages (and the GPU image) lack.
    from db import mask_url

    cfg = ctx.config
    rows = []
    for key in keys():
        value = cfg.get(key.dotted)
        rows.append({"key": key.dotted, "value": render_value(value),
                     "source": cfg.sources[key.dotted]})
    # Derived locations, so an operator sees where data actually goes.
    derived = {"storage.spool_dir": cfg.spool_dir, "storage.results_dir": cfg.results_dir,
               "database.url": mask_url(cfg.database_url)}
    for row in rows:
        if row["key"] in derived and row["value"] == "(unset)":
            row["value"] = str(derived[row["key"]])
            row["source"] = "default (derived from storage.var_dir)"
        elif row["key"] == "database.url":
            row["value"] = mask_url(row["value"])
    if args.format == "json":
        ctx.print(json.dumps({"file": str(cfg.file) if cfg.file else None, "values": rows}, indent=2))
    else:
        ctx.print(f"configuration file: {cfg.file or '(none: defaults)'}")
        ctx.print(render_table(rows, ["key", "value", "source"]))
    return 0


def run_template(args: argparse.Namespace, ctx) -> int:
    ctx.stdout.write(template())
    return 0

