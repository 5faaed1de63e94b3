"""One deadline for a whole exchange, on this thread: the lowest piece of the transport.

Stdlib only, so the pool, the bounded transport and the token cache can all read it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

# The monotonic time by which the exchange in progress on this thread must be over (None: none).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "cwsctl_exchange_deadline", default=None
)


def time_left() -> float | None:
    """Seconds left before the current exchange's deadline (None when there is none)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def exchange_deadline(seconds: float) -> Iterator[None]:
    """Bound everything sent and received inside the block (on this thread) to ``seconds``.

    An enclosing deadline that ends sooner stays in force.
    """
    deadline = time.monotonic() + seconds
    current = _deadline.get()
    token = _deadline.set(deadline if current is None else min(current, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)
