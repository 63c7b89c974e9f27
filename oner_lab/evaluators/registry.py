"""Scoring tasks by name. A task turns one loaded eval set into named metrics and declares their names.

An eval set format (`data.eval_sources.<name>.format`, a unit subclassing
`spec.config.EvalSourceConfig`) reads files into a set and names the task that scores it; the
task's `metrics` are what `study` checks `sweep.metric` against and what the evaluation logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from oner_lab.metric_names import Metric

Encoder = Callable[..., Tensor]
Score = Callable[[Encoder, Encoder, Any, int, Any], Mapping[str, float]]


@dataclass(frozen=True)
class Task:
    """`score(encode_image, encode_text, data, batch_size, device)` returns exactly `metrics`' names."""

    name: str
    metrics: tuple[Metric, ...]
    score: Score

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(metric.name for metric in self.metrics)


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    known = TASKS.get(task.name)
    if known is not None and known.score.__qualname__ != task.score.__qualname__:
        raise ValueError(f"scoring task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def task_of(data: object) -> Task:
    """The task a loaded eval set declares (`data.task`), built-in tasks registered on first use."""
    import oner_lab.evaluators  # noqa: F401  (registers the built-in tasks and formats)

    name = getattr(data, "task", None)
    if name not in TASKS:
        raise TypeError(
            f"{type(data).__name__}: an eval set names its scoring task in `task`; registered: {', '.join(TASKS)}"
        )
    return TASKS[name]


@dataclass(frozen=True)
class ReadContext:
    """What an eval set format needs to read its set: the tokenizer and sizes, the corrupt-sample rule,
    and the run's data section (the built-in sets generate from it into `cache_root`)."""

    tokenizer: Any
    image_size: int
    max_text_len: int
    on_corrupt: str
    workers: int
    data: Any
    cache_root: Any
