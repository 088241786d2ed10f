"""The ``amagi`` command line.

Each subcommand is one module in :mod:`amagi_plugin.cli.commands` exposing
``register(subparsers, parents)``; the module's parser sets ``handler=run`` where
``run(args, ctx) -> int``. ``main(argv)`` is callable in-process (tests do so): it turns
known errors into one line on stderr and an :class:`~amagi_plugin.errors.ExitCode`,
``--debug`` re-raises instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from amagi_plugin import __version__
from amagi_plugin.config import Config, keys, load_config, parse_set_option
from amagi_plugin.errors import ExitCode, exit_code_for
from amagi_plugin.logsetup import setup_logging

log = logging.getLogger(__name__)

PROG = "amagi"


@dataclass
class Context:
    """What a command may touch of the outside world; tests pass their own."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    cwd: Path = field(default_factory=Path.cwd)
    config: Config | None = None

    def print(self, *parts: Any) -> None:
        print(*parts, file=self.stdout)


def _config_parent() -> argparse.ArgumentParser:
    """Options shared by every subcommand: config file, overrides, logging."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration")
    g.add_argument("-c", "--config", metavar="FILE",
                   help="TOML configuration file (default: $AMAGI_CONFIG, else built-in defaults)")
    g.add_argument("--set", dest="set_options", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override any configuration key")
    g.add_argument("--log-level", dest="cfg__logging.level", metavar="LEVEL",
                   default=argparse.SUPPRESS, help="debug, info, warning, error")
    g.add_argument("--log-format", dest="cfg__logging.format", metavar="FORMAT",
                   default=argparse.SUPPRESS, help="text or json")
    g.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    o = p.add_argument_group("configuration keys (each overrides the file and the environment)")
    for key in keys():
        o.add_argument(key.flag, dest=f"cfg__{key.dotted}", default=argparse.SUPPRESS,
                       metavar=key.metavar or key.name.upper(), help=argparse.SUPPRESS)
    return p


def config_flag(parser: argparse.ArgumentParser | Any, *flags: str, key: str, **kw: Any) -> None:
    """Add a short per-command flag (``--port``) that overrides configuration key ``key``."""
    kw.setdefault("default", argparse.SUPPRESS)
    kw.setdefault("help", next(k.help for k in keys() if k.dotted == key) + f" [{key}]")
    parser.add_argument(*flags, dest=f"cfg__{key}", **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="AMAGI workstation plugin: active intraoperative bleeding detection in "
        "surgical video, as a DICOM node. Not for clinical use with the bundled demo model.",
        epilog="Configuration keys can be set with --SECTION-KEY on any command "
        "(see 'amagi config show' and 'amagi config template').",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [_config_parent()]
    from amagi_plugin.cli import commands

    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{mod.name}")
        module.register(sub, parents)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in getattr(args, "set_options", []) or []:
        k, v = parse_set_option(text)
        out[k] = v
    for name, value in vars(args).items():
        if name.startswith("cfg__"):
            out[name[5:]] = value
    return out


def main(argv: Sequence[str] | None = None, ctx: Context | None = None) -> int:
    """Run ``amagi`` with ``argv``; returns the exit status instead of exiting."""
    ctx = ctx or Context()
    parser = build_parser()
    try:  # --help, --version and usage errors print through the injected streams
        with contextlib.redirect_stdout(ctx.stdout), contextlib.redirect_stderr(ctx.stderr):
            args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    debug = bool(getattr(args, "debug", False))
    try:
        ctx.config = load_config(args.config, environ=ctx.environ,
                                 overrides=overrides_from_args(args), cwd=ctx.cwd)
        setup_logging(ctx.config.logging.level, ctx.config.logging.format, ctx.stderr,
                      ctx.config.logging.file)
        return int(args.handler(args, ctx))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=ctx.stderr)
        return ExitCode.INTERRUPTED
    except Exception as e:
        if debug:
            raise
        code = exit_code_for(e)
        if code == ExitCode.INTERNAL:
            log.debug("unexpected error", exc_info=True)
            print(f"{PROG}: internal error: {type(e).__name__}: {e} (rerun with --debug for the "
                  "traceback)", file=ctx.stderr)
        else:
            print(f"{PROG}: error: {e}", file=ctx.stderr)
        return code


def exit_with(code: int) -> NoReturn:
    """End the ``amagi`` process with ``code``: the console script's and ``python -m``'s last
    step. A process that trained under torchrun leaves without the interpreter's teardown
    (:func:`models.training.distributed.leave`: torch's process-group threads may abort it
    there, after the work is done)."""
    distributed = sys.modules.get("models.training.distributed")  # imported only if used
    if distributed is not None and distributed.ran_group():
        distributed.leave(code)
    sys.exit(code)


def entry() -> NoReturn:  # the console script
    exit_with(main())
