"""What `train.run` calls out to, so the core never imports MLflow or submitit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from oner_lab.spec.errors import ConfigError

__all__ = ["ConfigError", "Interrupted", "RunControl", "RunLogger"]


class RunLogger(Protocol):
    """Receives a run's metrics and artifacts (the tracking layer implements it with MLflow).

    `train.run` may call `log_metrics` again for a step it logged before it was
    interrupted (it resumes from the last checkpoint); implementations drop such repeats.
    An implementation may also offer `log_params(params: Mapping[str, str])`: the loop then logs the
    run's parameter count and FLOPs per step through it (cost.py).
    """

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def flush(self) -> None:
        """Write what is buffered; called right after each checkpoint so a crash loses no step
        that the checkpoint already covers."""


class RunControl(Protocol):
    """Lets a launcher ask a running training loop to checkpoint and stop (preemption)."""

    def should_stop(self) -> bool: ...


class Interrupted(Exception):
    """Raised by `train.run` after it wrote a checkpoint because `RunControl.should_stop()` said so."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step} after writing a checkpoint")
        self.step = step
