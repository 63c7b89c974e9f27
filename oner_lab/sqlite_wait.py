"""How long one thread's MLflow calls wait on a SQLite file that another process holds locked.

MLflow starts every SQLite session with `PRAGMA busy_timeout = 20000`: a write that meets another
process's lock waits up to 20 s inside the call. On the training step's path (a metric flush) that
is a 20 s stall per flush, and a lock probe made just before the write cannot rule it out: the lock
can be taken between the probe and the write (seen in CI: a run stood still for the 8 s a test held
the lock). `short_lock_wait` caps the busy timeout of the sessions the calling thread opens, so the
write itself fails fast with "database is locked"; the logger keeps the metrics and tries again
(store_outage.py). Other threads and processes keep MLflow's 20 s.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_BUSY_TIMEOUT = re.compile(r"\s*PRAGMA\s+busy_timeout\b", re.IGNORECASE)
_cap_ms: ContextVar[int | None] = ContextVar("oner_sqlite_busy_cap_ms", default=None)

FLUSH_WAIT_MS = 250
"""A metric flush waits this long on a lock: another run's flush into the same file (milliseconds)
passes, a lock held for seconds fails the flush, which is retried after a backoff."""


@contextmanager
def short_lock_wait(ms: int = FLUSH_WAIT_MS) -> Iterator[None]:
    """MLflow calls in this block (this thread) wait at most `ms` on a SQLite lock."""
    _install()
    token = _cap_ms.set(ms)
    try:
        yield
    finally:
        _cap_ms.reset(token)


def _cap(_conn: object, _cursor: object, statement: str, parameters: object, *_: object) -> tuple[str, object]:
    """SQLAlchemy's `before_cursor_execute` (retval=True): MLflow's busy-timeout pragma, capped."""
    ms = _cap_ms.get()
    if ms is not None and _BUSY_TIMEOUT.match(statement):
        return f"PRAGMA busy_timeout = {int(ms)}", parameters
    return statement, parameters


@functools.cache
def _install() -> None:
    """One listener on every SQLAlchemy engine of the process; it does nothing outside `short_lock_wait`."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", _cap, retval=True)
