"""The final weights of a run as one weights-only file, for the run's MLflow page (`weights/`).

`<run dir>/checkpoints/last.pt` holds everything a resume needs (optimiser, EMA copy, RNG states); a
reader wants only the trained tower. With `safetensors` installed the file is `model.safetensors`
(written by `safetensors.torch.save_model`, tied weights stored once; read back with
`safetensors.torch.load_model(OneTower(TowerConfig(**json.loads(metadata["tower"]))), path)`),
otherwise `model.pt`, a `torch.save`d state dict (`torch.load(path, weights_only=True)`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oner_lab.model import OneTower, TowerConfig

SAFE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
"""What the RNG state inside a training checkpoint is made of (numpy's generator state): allowed, nothing else."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, loaded with `weights_only=True` (numpy's RNG state allowed)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def export(checkpoint: Path, out_dir: Path) -> Path:
    """Writes the online tower's weights of `checkpoint` to `out_dir`; returns the file."""
    state = load_checkpoint(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"tower": json.dumps(state["tower"]), "step": str(state["step"]), "format": "oner_lab.OneTower"}
    try:
        from safetensors.torch import save_model
    except ImportError:
        path = out_dir / "model.pt"
        torch.save(state["model"], path)
        return path
    with torch.device("meta"):
        model = OneTower(TowerConfig(**state["tower"]))
    model.load_state_dict(state["model"], assign=True)
    path = out_dir / "model.safetensors"
    save_model(model, str(path), metadata=metadata)
    return path


__all__ = ["export", "load_checkpoint"]
