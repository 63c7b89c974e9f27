"""A micro sweep spec for the sweep tests (local and SLURM backends), and helpers to start, kill and
inspect its study.

Four enqueued trials, two at a time, median pruner active once two trials completed. At the mid-run
evaluation (step 20) the trials score eval/shapes/rsum 101.9 (trial 0, lr 3e-3), 111.3 (trial 1,
lr 2e-3), 144.4 (trial 2, lr 5e-4) and 91.3 (trial 3, lr 1e-9, chance level), measured with the
deterministic tokenizer, so every fresh data cache gives the same numbers. Trial 3 starts only after
two trials ended (two run at a time), so the pruner is active by then whatever the timing, and it is
below the median of any two or three of the others (>= 15 points); trial 2, the only one that can
meet two completed trials at step 20 in an uninterrupted study, is above their median (>= 37 points).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow_store import subprocess_env

from oner_lab.train import PROGRESS_ENV

EXPERIMENT = STUDY = "sweep-micro"
STEPS, EVAL_EVERY = 40, 20
LEARNING_RATES = [3.0e-3, 2.0e-3, 5.0e-4, 1.0e-9]
PRUNED_TRIAL = 3

SPEC = f"""
name: {STUDY}
launcher: {{backend: local}}
base:
  model: {{preset: tiny, width: 32, depth: 1, num_heads: 2}}
  objective: {{variant: oner}}
  data: {{source: {{kind: shapes}}, train_size: 256, eval_images: 32, cls_images_per_class: 2, cache_dir: DATA_CACHE}}
  train: {{batch_size: 16, steps: {STEPS}, min_lr: 0.0, warmup_steps: 1, checkpoint_every: {STEPS}, log_every: 5, threads: 1}}
  eval: {{sets: [shapes], every_steps: {EVAL_EVERY}, batch_size: 32}}
grid:
  variants: {{oner: }}
sweep:
  metric: eval/shapes/rsum
  direction: maximize
  trials: 4
  parallel: 2
  pruner: {{type: median, n_startup_trials: 2}}
  space:
    train.lr: {{type: float, low: 1.0e-9, high: 1.0e-1, log: true}}
  enqueue: [{", ".join(f"{{train.lr: {lr}}}" for lr in LEARNING_RATES)}]
"""


def write_spec(directory: Path, data_cache: Path) -> Path:
    path = directory / "sweep.yaml"
    path.write_text(SPEC.replace("DATA_CACHE", str(data_cache)))
    return path


def start_driver(directory: Path, spec: Path, *arguments: str) -> subprocess.Popen:
    """`python -m oner_lab.run` in `directory`; its jobs write every metric at once and a progress line
    per step to their logs (progress is visible)."""
    log = (directory / f"driver-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "oner_lab.run", str(spec), *arguments],
        cwd=directory,
        env={**subprocess_env(), "ONER_MLFLOW_FLUSH_S": "0", PROGRESS_ENV: "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def study_created(directory: Path) -> bool:
    """Whether the driver has created the study, read without opening an Optuna storage: opening one
    creates its tables, which would race the driver's own creation of them."""
    path = directory / "optuna.db"
    if not path.exists():
        return False
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            return db.execute("SELECT count(*) FROM studies WHERE study_name = ?", (STUDY,)).fetchone()[0] > 0
        except sqlite3.OperationalError:  # the tables are being created
            return False


def study_in(directory: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{directory / 'optuna.db'}")


def client_of(directory: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")


def runs_in(directory: Path) -> list[Run]:
    client = client_of(directory)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return (
        []
        if experiment is None
        else client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    )


def wait_mid_study(directory: Path, driver: subprocess.Popen, timeout_s: float = 240) -> None:
    """Returns once a trial has completed and another is training in its first half (it has logged a
    step, at most STEPS // 2): a trial seen near its last step could finish, and end its trial COMPLETE,
    before the killed driver's jobs notice, leaving nothing to resume on a slow machine."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before it could be killed"
        if study_created(directory) and (directory / "mlflow.db").exists():
            trials = study_in(directory).get_trials(deepcopy=False)
            running = [
                t for t in trials if t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
            ]
            if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
                client = client_of(directory)
                for trial in running:
                    steps = [m.step for m in client.get_metric_history(trial.user_attrs["mlflow_run_id"], "train/loss")]
                    if steps and max(steps) <= STEPS // 2:
                        return
        time.sleep(0.2)
    raise AssertionError(f"no trial was training after one completed within {timeout_s}s")
