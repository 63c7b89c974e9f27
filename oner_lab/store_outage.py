"""Riding out a tracking store that stops answering (deleted, read-only, full, locked, server down).

Training must not die because MLflow cannot be written for a minute: writes that fail are kept
and tried again with backoff. Only when the store has failed for longer than the outage window
(`tracking.outage_window_s`) does the run give up, at a checkpoint, with `StoreUnavailable`,
whose message is the one paragraph the CLI prints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

MLFLOW_DB_LOGGER = "mlflow.store.db.utils"
"""MLflow logs every failed SQL call with its traceback at ERROR; a failure ridden out here is not one."""

DEFAULT_WINDOW_S = 600.0
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 5.0
"""A failed try costs one refused connection or one non-blocking lock probe, so trying every 5 s is
cheap; it means a store back from an outage gets the held metrics within 5 s (at 30 s, a server back
after 38 s down waited another 23 s for the next try)."""
EXIT_STORE_LOST = 3
"""The CLI's exit code when the tracking store failed during the runs (docs/reliability.md)."""


class StoreUnavailable(RuntimeError):
    """The tracking store could not be written for longer than the outage window."""

    def __init__(self, uri: str, cause: str, waited_s: float) -> None:
        self.uri = uri
        self.cause = cause
        self.waited_s = waited_s
        super().__init__(
            f"the tracking store {uri} could not be written for {waited_s:.0f} s ({cause}). "
            "Training stopped at its last checkpoint and the metrics MLflow did not take are kept in the "
            "run directory (unlogged_metrics.jsonl). Make the store usable again (a deleted or moved file: "
            "put it back or let a rerun create a new one; read-only or full: free the disk or fix the "
            "mount; locked: end the process holding it; a server: start it or check the network), then "
            "rerun the same command: runs resume from their checkpoints, and the runs left RUNNING are "
            "marked with how they ended (tag oner.error)"
        )


def cause_of(error: BaseException) -> str:
    """The innermost message of an MLflow / SQLAlchemy / HTTP error chain (`raise ... from`), on one line."""
    seen: BaseException | None = error
    message = ""
    while seen is not None:
        text = str(seen).strip()
        if text:
            message = text
        seen = seen.__cause__
    first = message.splitlines()[0] if message else type(error).__name__
    for noise in ("(sqlite3.OperationalError) ", "(Background on this error at"):
        first = first.replace(noise, "")
    return first[:300].strip()


class Outage:
    """Tracks one writer's failed attempts: when to try again, and when the window has passed."""

    def __init__(
        self, uri: str, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.uri = uri
        self.window_s = window_s
        self._clock = clock
        self.since: float | None = None
        self.cause = ""
        self._next_try = 0.0
        self._delay = FIRST_RETRY_S

    @property
    def expired(self) -> bool:
        return self.since is not None and self._clock() - self.since > self.window_s

    def due(self) -> bool:
        """Whether a write should be tried now (always, unless a recent one failed)."""
        return self.since is None or self._clock() >= self._next_try

    def attempt(self, call: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, result) when `call` succeeded; (False, None) when it failed (recorded for backoff)."""
        try:
            with quiet_mlflow():
                result = call()
        except Exception as error:  # noqa: BLE001 - MLflow wraps store failures in many types
            now = self._clock()
            if self.since is None:
                self.since = now
                self._delay = FIRST_RETRY_S
            self.cause = cause_of(error)
            self._next_try = now + self._delay
            self._delay = min(self._delay * 2, MAX_RETRY_S)
            return False, None
        self.since = None
        return True, result

    def error(self) -> StoreUnavailable:
        waited = 0.0 if self.since is None else self._clock() - self.since
        return StoreUnavailable(self.uri, self.cause, waited)

    def insist(self, call: Callable[[], T]) -> T:
        """`call`, retried with backoff until it succeeds or the window passes (then StoreUnavailable)."""
        while True:
            done, result = self.attempt(call)
            if done:
                return result  # type: ignore[return-value]
            if self.expired:
                raise self.error()
            time.sleep(max(0.0, self._next_try - self._clock()))


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silences MLflow's SQL error log while a store call is tried (its failure is reported here instead)."""
    logger = logging.getLogger(MLFLOW_DB_LOGGER)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def quiet_store_tracebacks() -> None:
    """MLflow logs every failed SQL call with a full traceback (`mlflow.store.db.utils`, ERROR); during
    an outage that is one traceback per retried call in the job's output. The lab names the store and
    the cause itself (one paragraph, exit 3), so those records are dropped in a job's process."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
