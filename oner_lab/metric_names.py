"""The metric names of the built-in scoring tasks, declared once: the tasks (oner_lab/evaluators) return
exactly these, the sweep checks `sweep.metric` against them, and the analysis tables label their
columns from them. Imports nothing of the lab, so analysis may read it without the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One value an eval set logs as eval/<set>/<name>; `label` is its column in the paper's tables, if any."""

    name: str
    label: str | None = None


RETRIEVAL = (
    Metric("tr_r1", "TR@1"),
    Metric("tr_r5", "TR@5"),
    Metric("tr_r10"),
    Metric("ir_r1", "IR@1"),
    Metric("ir_r5", "IR@5"),
    Metric("ir_r10"),
    Metric("rsum"),
    Metric("modality_gap"),
    Metric("alignment"),
)
"""COCO-protocol retrieval (evaluate.retrieval_recall at K = 1, 5, 10), modality gap and alignment."""

CLASSIFICATION = (Metric("top1", "top-1"), Metric("top5"))
"""Prompt-ensembled zero-shot classification (evaluate.classification_accuracy at K = 1, 5)."""


def names(metrics: tuple[Metric, ...]) -> tuple[str, ...]:
    return tuple(metric.name for metric in metrics)


def labels(metrics: tuple[Metric, ...]) -> dict[str, str]:
    """name -> table label, for the metrics the paper's tables show."""
    return {metric.name: metric.label for metric in metrics if metric.label is not None}
