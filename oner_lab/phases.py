"""Where a run's wall time goes: seconds per phase, logged as `time/<phase>_s` with the final metrics.

Why: a run's total (`time/session_s`) says nothing about what to cut. The phases are the ones a
researcher can act on: start-up, data, model building, training steps, evaluation, checkpoints,
tracking (benchmarks/ablation_time.py adds them up over an invocation).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("startup", "data", "build", "steps", "eval", "checkpoint", "tracking", "embeddings")
"""The phases in the order a run goes through them (startup: imports and the run's setup in the job)."""


class PhaseClock:
    """Accumulates wall seconds per phase; phases may repeat (every evaluation adds to `eval`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - started)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def metrics(self) -> dict[str, float]:
        return {f"time/{phase}_s": self.seconds[phase] for phase in PHASES if phase in self.seconds}


__all__ = ["PHASES", "PhaseClock"]
