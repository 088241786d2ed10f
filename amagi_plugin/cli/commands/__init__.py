"""The ``amagi`` subcommands, one module each, and the argument types they share."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def comma_numbers(kind: type = float) -> Callable[[str], tuple]:
    """An argparse ``type``: comma-separated numbers of ``kind`` (``float`` or ``int``); anything
    else is a usage error naming what was given."""
    what = "integers" if kind is int else "numbers"

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from e
    return parse
