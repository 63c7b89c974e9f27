"""A lost store does not cost the training: a run whose config hash the store does not know, but
whose run directory holds a checkpoint, resumes from it into a new MLflow run tagged as recovered.

Also finds run directories again after the project folder moved: runs are tagged with their
directory relative to `launcher.runs_dir` (older runs only with the absolute path, still read).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from mlflow import MlflowClient

from oner_lab import tracking
from oner_lab.spec import Spec

LAST = Path("checkpoints") / "last.pt"


def run_dir_of(spec: Spec, config_hash: str, found: tracking.TrackedRun | None) -> Path:
    """Where a tracked run's files are: its relative tag under this `runs_dir`; else its absolute tag
    when that exists, or the folder of that name under `runs_dir` (the project moved); else the default."""
    runs_dir = Path(spec.launcher.runs_dir).resolve()
    if found is not None and found.run_dir_rel:
        return runs_dir / found.run_dir_rel
    if found is not None and found.run_dir:
        absolute = Path(found.run_dir)
        if absolute.exists() or not (runs_dir / absolute.name).exists():
            return absolute
        return runs_dir / absolute.name
    return spec.run_dir(config_hash).resolve()


def checkpoint_on_disk(spec: Spec, config_hash: str) -> Path | None:
    """`<runs_dir>/<hash>/checkpoints/last.pt` when it is there (a run the store lost)."""
    path = spec.run_dir(config_hash).resolve() / LAST
    return path if path.is_file() else None


def read_kept(path: Path) -> dict:
    """The step and tokenizer a checkpoint keeps, read safely (tensors and plain data only, mapped, not
    copied); {} when the file does not load that way."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an older checkpoint with pickled objects: resume says more
        return {}
    return {key: state[key] for key in ("step", "tokenizer") if key in state}


def relog(client: MlflowClient, run_id: str, checkpoint: Path, kept: dict) -> None:
    """Puts back what the checkpoint keeps into the new run: the step it resumes from (tag) and the
    tokenizer (artifact `tokenizer/`, which a run logs only at step 0). The metrics the run directory
    keeps (`unlogged_metrics.jsonl`) are logged by the job's logger when it starts."""
    tags = {tracking.TAG_RECOVERED: str(checkpoint)}
    if "step" in kept:
        tags["oner.recovered_step"] = str(int(kept["step"]))
    tracking.set_tags(client, run_id, tags)
    if isinstance(kept.get("tokenizer"), str):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "tokenizer.json").write_text(kept["tokenizer"])
            tracking.retry_locked(lambda: client.log_artifacts(run_id, folder, "tokenizer"))
