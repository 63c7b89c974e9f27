"""Dispatch: every backend is a submitit executor running the same `TrainingJob` (-> `train.run`)."""

from oner_lab.launch.executors import Dispatch, LaunchError, make_executor, submit
from oner_lab.launch.job import JobOutcome, OwnerControl, TrainingJob
from oner_lab.launch.wait import stop, wait_for

__all__ = [
    "Dispatch",
    "JobOutcome",
    "LaunchError",
    "OwnerControl",
    "TrainingJob",
    "make_executor",
    "stop",
    "submit",
    "wait_for",
]
