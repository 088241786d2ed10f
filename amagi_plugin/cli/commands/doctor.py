"""``amagi doctor``: check the installation for real and print a table (exit 1 on failure)."""

from __future__ import annotations

import argparse
import json
import math

from amagi_plugin.cli.table import render_table
from amagi_plugin.errors import ExitCode, InputError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", parents=parents, help="check the environment",
                       description="Check torch, codecs, DICOM libraries, database, spool, model, "
                       "DICOM tools and the configured peers (C-ECHO to each DIMSE "
                       "destination, a QIDO-RS query to each DICOMweb destination and poll "
                       "source). Exit status 1 when a required part is missing.")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="output format (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="longest wait for one peer, seconds (default 5; a DICOMweb peer's "
                   "timeout_s when shorter)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.doctor import PEER_TIMEOUT_S, run_checks

    timeout = PEER_TIMEOUT_S if args.timeout is None else args.timeout
    if not (math.isfinite(timeout) and timeout > 0):
        raise InputError(f"--timeout must be a number of seconds more than 0, got "
                         f"{args.timeout:g}")
    checks = run_checks(ctx.config, environ=ctx.environ, peer_timeout=timeout)
    failed = [c for c in checks if c.failed]
    if args.format == "json":
        ctx.print(json.dumps([{"check": c.name, "status": c.status.value, "detail": c.detail,
                               "required": c.required} for c in checks], indent=2))
    else:
        rows = [{"check": c.name, "status": c.status.value,
                 "detail": c.detail + ("" if c.required else " [optional]")} for c in checks]
        ctx.print(render_table(rows, ["check", "status", "detail"]))
        ctx.print("")
        ctx.print(f"{len(failed)} required check(s) failed: {', '.join(c.name for c in failed)}"
                  if failed else "all required checks passed")
    return ExitCode.FAILURE if failed else ExitCode.OK
