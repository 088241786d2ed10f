"""``amagi reprocess``: queue stored cases for analysis with the configured model.

The cases are chosen with the filters of ``amagi cases list``; each of their received
instances gets one job for the model of the configuration (``model.name`` and
``model.checkpoint``), which the workers running that model take (every ``amagi serve`` with
that model, on every host sharing the database). Idempotent: an instance that already has a
job for that model version is left alone, unless that job failed (it is queued again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from amagi_plugin.cli.commands.cases import _case_filter, _filters

#: Instances queued per transaction.
BATCH = 500


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reprocess", parents=parents,
        help="queue stored cases for analysis with the configured model",
        description="Queue the received videos of the cases matching the filters (as 'amagi "
        "cases list') for analysis with the configured model (--model-name, "
        "--model-checkpoint); the workers that run that model analyse them and deliver the "
        "results. An instance already analysed or queued with that model version is left "
        "alone; one whose job failed is queued again. Exit 1 when some videos are no longer "
        "in the spool (they are not queued).")
    _filters(p)
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be queued, change nothing")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    import sqlalchemy as sa

    from amagi_plugin.errors import ExitCode
    from amagi_plugin.modelspec import resolve_model
    from db import open_database
    from db.queries import iter_cases
    from db.queue import enqueue
    from db.schema import Instance

    spec = resolve_model(ctx.config.model)  # the files must exist; nothing is loaded
    flt = _case_filter(args)
    database = open_database(ctx.config.database_url, read_only=True)
    queued = requeued = present = 0
    missing: list[str] = []
    try:
        with database.session() as s:  # one instance may be several cases (several models)
            instances = list(dict.fromkeys(r.sop_instance_uid for r in iter_cases(s, flt)))
        for start in range(0, len(instances), BATCH):
            batch = instances[start:start + BATCH]
            with database.session(write=True) as s:
                spool = dict(s.execute(sa.select(Instance.sop_instance_uid, Instance.spool_path)
                                       .where(Instance.sop_instance_uid.in_(batch))).all())
                for uid in batch:
                    if not Path(spool[uid]).is_file():
                        missing.append(uid)
                    elif not args.dry_run:
                        res = enqueue(s, uid, model_name=spec.name, model_version=spec.version,
                                      max_attempts=ctx.config.worker.max_attempts)
                        queued += res.created
                        requeued += res.requeued
                        present += not (res.created or res.requeued)
    finally:
        database.dispose()
    found = len(instances)
    if args.dry_run:
        ctx.print(f"{found} video(s) match; {found - len(missing)} would be queued for "
                  f"{spec.name} {spec.version} (unless already analysed or queued with it)")
    else:
        ctx.print(f"{found} video(s) match: {queued} queued for {spec.name} {spec.version}, "
                  f"{requeued} failed job(s) queued again, {present} already analysed or "
                  "queued with it")
    if missing:
        ctx.print(f"{len(missing)} video(s) no longer in the spool, not queued: "
                  + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        return ExitCode.FAILURE
    return ExitCode.OK
