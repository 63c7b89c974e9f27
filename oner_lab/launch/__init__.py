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
    "ClusterProfile": "cluster",
    "LaunchError": "cluster",
    "SlurmResources": "cluster",
    "Dispatch": "executors",
    "make_executor": "executors",
    "submit": "executors",
    "JobOutcome": "job",
    "OwnerControl": "job",
    "TrainingJob": "job",
    "run_study": "sweep",
    "stop": "wait",
    "wait_for": "wait",
}
_RENAMED = {"resolve_slurm": ("cluster", "resolve")}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module, attribute = _WHERE[name], name
    elif name in _RENAMED:
        module, attribute = _RENAMED[name]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


__all__ = sorted([*_WHERE, *_RENAMED])
