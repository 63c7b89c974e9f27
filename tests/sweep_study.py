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

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
from held_processes import job_processes, locks_held, run_a_slice, signal_all
from job_logs import job_log, trained_step
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow_store import subprocess_env

from oner_lab.train import PROGRESS_ENV

EXPERIMENT = STUDY = "sweep-micro"
STEPS, EVAL_EVERY, LOG_EVERY = 40, 20, 5
LEARNING_RATES = [3.0e-3, 2.0e-3, 5.0e-4, 1.0e-9]
PRUNED_TRIAL = 3

SPEC = f"""
name: {STUDY}
launcher: {{backend: local}}
base:
  model: {{preset: tiny, width: 32, depth: 1, num_heads: 2}}
  objective: {{variant: oner}}
  data: {{source: {{kind: shapes}}, train_size: 256, eval_images: 32, cls_images_per_class: 2, cache_dir: DATA_CACHE}}
  train: {{batch_size: 16, steps: {STEPS}, min_lr: 0.0, warmup_steps: 1, checkpoint_every: {STEPS}, log_every: {LOG_EVERY}, threads: 1}}
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


def lock_holders(lock: Path) -> list[int]:
    """The processes with `lock` open: a local trial's job holds its run directory's `.lock` while it trains."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if entry.readlink() == lock:
                found.append(int(entry.parts[2]))
        except OSError:
            continue
    return sorted(set(found))


def trial_job(directory: Path, trial: optuna.trial.FrozenTrial) -> tuple[list[int], Path | None]:
    """The processes of the trial's job and its stderr file: by SLURM job id (what the driver records
    on SLURM), else by its run directory's lock, the log being the holder's stderr."""
    if "slurm_job" in trial.user_attrs:
        job = trial.user_attrs["slurm_job"]
        return job_processes(job), job_log(directory / "runs", job)
    if "run_dir" not in trial.user_attrs:
        return [], None
    pids = lock_holders(Path(trial.user_attrs["run_dir"]) / ".lock")
    try:
        return pids, (Path(os.readlink(f"/proc/{pids[0]}/fd/2")) if pids else None)
    except OSError:
        return [], None


def hold_after_first_steps(log: Path, pids: list[int], stores: list[Path], timeout_s: float = 60) -> int:
    """Lets the stopped job run 20 ms at a time until its log shows a step past the first logged one
    (so its run has a metric) and it holds no lock on `stores`, and leaves it stopped there: the step it
    holds at, or 0 if the job ended meanwhile. A job stopped inside an MLflow or Optuna SQLite write
    would block the driver's own writes (it creates the next trial's run with interrupts deferred) until
    the store's outage window ends: CI once saw the driver not exit within 90 s of its SIGTERM."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        step = trained_step(log)
        if step > LOG_EVERY and not locks_held(pids, stores):
            return step
        if not run_a_slice(pids, 0.02):
            return 0
    signal_all(pids, signal.SIGCONT)
    return 0


def stores_of(directory: Path) -> list[Path]:
    """The study's SQLite stores and their lock and journal files, which its jobs lock while they write."""
    return sorted(path for path in directory.iterdir() if path.name.startswith(("mlflow.db", "optuna.db")))


def hold_a_trial_mid_training(
    directory: Path, driver: subprocess.Popen, timeout_s: float = 240
) -> tuple[int, int, list[int]]:
    """Once a trial completed, stops (SIGSTOP) the job of another one (not the trial to be pruned,
    whose fate is decided at step 20) after its first trained steps, at most half-way: (trial number,
    step it is held at, its processes). A 40-step trial trains in about a second on a fast machine,
    less than a poll of the stores and the driver's reaction take; held, it is still training when the
    driver goes. SLURM's scancel continues it (SIGCONT, then SIGTERM); a local job needs SIGCONT."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before it could be stopped"
        trials = study_in(directory).get_trials(deepcopy=False) if study_created(directory) else []
        if any(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials):
            for trial in trials:
                if trial.state != optuna.trial.TrialState.RUNNING or trial.number == PRUNED_TRIAL:
                    continue
                pids, log = trial_job(directory, trial)
                if pids and log is not None and signal_all(pids, signal.SIGSTOP):
                    step = hold_after_first_steps(log, pids, stores_of(directory))
                    if LOG_EVERY < step <= STEPS // 2:  # far from the end: the signal lands mid-training
                        return trial.number, step, pids
                    signal_all(pids, signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError(f"no trial was training after one completed within {timeout_s}s")
