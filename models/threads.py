"""How many CPU threads torch uses, set for one block of work and then restored.

torch's intra-op thread count is process-wide: a library function that set it would change
every later computation of its caller. :func:`torch_threads` scopes the setting to a
``with`` block (threads that run torch meanwhile see it too: the block owns the process's
torch while it runs); the count before it comes back when the block ends, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None`` or 0: as they are)."""
    import torch

    if not threads:
        yield
        return
    if threads < 0:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
