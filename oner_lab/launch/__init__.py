"""Dispatch: every backend is a submitit executor running the same `TrainingJob` (-> `train.run`)."""

from oner_lab.launch.cluster import ClusterProfile, LaunchError, SlurmResources
from oner_lab.launch.cluster import resolve as resolve_slurm
from oner_lab.launch.executors import Dispatch, make_executor, submit
from oner_lab.launch.job import JobOutcome, OwnerControl, TrainingJob
from oner_lab.launch.sweep import run_study
from oner_lab.launch.wait import stop, wait_for

__all__ = [
    "ClusterProfile",
    "Dispatch",
    "JobOutcome",
    "LaunchError",
    "OwnerControl",
    "SlurmResources",
    "TrainingJob",
    "make_executor",
    "resolve_slurm",
    "run_study",
    "stop",
    "submit",
    "wait_for",
]
