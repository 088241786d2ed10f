"""``amagi poll --source URL``: queue the videos of a DICOMweb archive that cannot push."""

from __future__ import annotations

import argparse

from amagi_plugin.cli.webargs import add_web_options, web_options


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "poll", parents=parents, help="queue new videos found on a DICOMweb server",
        description="Ask a DICOMweb server (QIDO-RS) for its video instances (Video Endoscopic, "
        "Microscopic, Photographic), retrieve each one not yet in the case store (WADO-RS) into "
        "the spool and queue its analysis, as if it had been pushed by C-STORE: a running "
        "'amagi serve' (role all or worker) on the same database and storage analyses and "
        "delivers it. What the case store already holds is never retrieved or queued again, "
        "so a restarted poller does not queue twice. Repeats every --interval seconds until "
        "SIGINT/SIGTERM, or once with --once.")
    p.add_argument("--source", required=True, metavar="URL",
                   help="the server's DICOMweb service root, http(s)://HOST/dicom-web")
    p.add_argument("--study", metavar="STUDY_UID", help="only this study")
    p.add_argument("--since", metavar="YYYYMMDD",
                   help="only studies of this date or later (Study Date)")
    p.add_argument("--interval", type=float, default=60.0, metavar="S",
                   help="seconds between two polls (default 60)")
    p.add_argument("--recent-days", type=int, metavar="D",
                   help="for a large archive: between two full listings, list only the "
                   "studies of the last D days (Study Date; at least 1). Default: every poll "
                   "lists every study")
    p.add_argument("--full-every", type=float, default=24.0, metavar="H",
                   help="with --recent-days, hours between two full listings, which find "
                   "videos added late to older studies (default 24; the first poll is one)")
    p.add_argument("--once", action="store_true",
                   help="poll once and exit (non-zero if the server could not be queried or "
                   "an instance could not be retrieved)")
    add_web_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    import datetime as dt
    import signal
    import threading

    from amagi_plugin.config import check_study_date
    from amagi_plugin.errors import ConfigError, ExitCode
    from amagi_plugin.modelspec import resolve_model
    from amagi_plugin.webin import Poller, web_source
    from db import open_database
    from dicom_io.net.checks import check_uid

    if args.interval <= 0:
        raise ConfigError(f"--interval must be more than 0 seconds, got {args.interval:g}")
    if args.recent_days is not None and args.recent_days < 1:
        raise ConfigError(f"--recent-days must be at least 1, got {args.recent_days}")
    if not args.full_every > 0:
        raise ConfigError(f"--full-every must be more than 0 hours, got {args.full_every:g}")
    try:
        check_study_date(args.since or "")
    except ValueError:
        raise ConfigError(f"--since {args.since!r} is not a date YYYYMMDD") from None
    if args.study and not check_uid(args.study, "--study")[0]:
        raise ConfigError(check_uid(args.study, "--study")[1])
    cfg = ctx.config
    source = web_source(args.source, web_options(args), ctx.environ)
    spec = resolve_model(cfg.model)  # the jobs name this model; nothing is loaded
    database = open_database(cfg.database_url)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    ctx.print(f"polling {source.base_url} for video instances"
              + (f" of study {args.study}" if args.study else "")
              + (f" of studies since {args.since}" if args.since else "")
              + ("" if args.once else f" every {args.interval:g} s")
              + (f" (studies of the last {args.recent_days} day(s) between full listings "
                 f"every {args.full_every:g} h)" if args.recent_days and not args.once else "")
              + f"; jobs queued for {spec.label}")
    try:
        poller = Poller(cfg, spec, source, database, study_uid=args.study,
                        study_date_from=args.since, recent_days=args.recent_days,
                        full_every_s=args.full_every * 3600.0)
        total = poller.run(args.interval, once=args.once, stop=stop,
                           report=lambda r: ctx.print(f"{dt.datetime.now():%H:%M:%S} {r}"))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        database.dispose()
    return ExitCode.FAILURE if args.once and total.failed else ExitCode.OK
