"""Dispatch: every backend is a submitit executor running the same `TrainingJob` (-> `train.run`).

The names below are imported on first use (PEP 562): a local job process unpickles its
`TrainingJob` from `oner_lab.launch.job` and waits for a slot, and importing the sweep driver,
the data and torch there would cost every waiting process seconds of CPU that the running ones
need (benchmarks/ablation_time.py).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ClusterProfile": ("cluster", "ClusterProfile"),
    "LaunchError": ("cluster", "LaunchError"),
    "SlurmResources": ("cluster", "SlurmResources"),
    "resolve_slurm": ("cluster", "resolve"),
    "Dispatch": ("executors", "Dispatch"),
    "make_executor": ("executors", "make_executor"),
    "submit": ("executors", "submit"),
    "JobOutcome": ("job", "JobOutcome"),
    "OwnerControl": ("job", "OwnerControl"),
    "TrainingJob": ("job", "TrainingJob"),
    "run_study": ("sweep", "run_study"),
    "stop": ("wait", "stop"),
    "wait_for": ("wait", "wait_for"),
}
"""Public name -> (module of this package, attribute there)."""


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _WHERE[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


__all__ = sorted(_WHERE)
