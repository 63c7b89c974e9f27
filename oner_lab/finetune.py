"""Fine-tuning: a run that starts from another run's weights (`train.init_from`, docs/spec.md).

The parent is a checkpoint this project wrote: the `checkpoints/last.pt` of a FINISHED run of another
grid variant (the CLI finds it and passes its path), or any `.pt` path. The child takes its model and
momentum-encoder weights and its tokenizer: the default WordPiece is trained from the parent's
captions, so the child's own data (COCO) would build another vocabulary and every embedding row
would mean a different token. Optimizer, temperature, step and learning-rate schedule are the
child's own: it starts at step 0. A child with its own `last.pt` resumes from that instead, with the
tokenizer it copied into `<run_dir>/tokenizer/` at its first start.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from oner_lab import checkpoint
from oner_lab.contract import ConfigError
from oner_lab.data import TextTokenizer
from oner_lab.model import TowerConfig
from oner_lab.spec.config import RunConfig
from oner_lab.spec.plan import names_variant

TOKENIZER_DIR = "tokenizer"
SHAPE_FIELDS = (
    "width",
    "depth",
    "num_heads",
    "mlp_ratio",
    "patch_size",
    "image_size",
    "max_text_len",
    "proj_dim",
    "head",
)
"""What the weights' shapes (and meaning) depend on; drop_path may differ between parent and child."""
KEY = "train.init_from"


def validate(config: RunConfig) -> None:
    """A checkpoint path must exist; a variant name is resolved (and checked) by the spec's planner."""
    init_from = config.train.init_from
    if init_from is not None and not names_variant(init_from) and not Path(init_from).is_file():
        raise ConfigError(
            KEY, init_from, "allowed: an existing .pt checkpoint written by oner_lab, or the name of a grid variant"
        )


def check_tower(parent: TowerConfig | dict[str, Any], child: TowerConfig, parent_name: str) -> None:
    """The child's tower must have the parent's shape; names the first field that differs."""
    values = asdict(parent) if isinstance(parent, TowerConfig) else parent
    for field in SHAPE_FIELDS:
        if values[field] != getattr(child, field):
            raise ConfigError(
                f"model.{field}",
                getattr(child, field),
                f"allowed: {values[field]}, as in {parent_name} (a run started from {KEY} keeps its parent's tower shape)",
            )


@dataclass(frozen=True)
class Parent:
    """The weights and tokenizer of the checkpoint a fine-tuning run starts from."""

    path: Path
    tower: dict[str, Any]
    model: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor]
    tokenizer: TextTokenizer | None  # None: a checkpoint written before checkpoints held their tokenizer

    @classmethod
    def read(cls, path: Path) -> Parent:
        if not path.is_file():
            raise ConfigError(
                KEY, str(path), "allowed: an existing checkpoint file (a parent run's checkpoints/last.pt)"
            )
        try:
            state = checkpoint.read(
                path, mmap=True
            )  # weights_only: a crafted file cannot run code; mmap: only the weights are read
        except checkpoint.CheckpointError as error:
            raise ConfigError(KEY, str(path), f"allowed: a .pt checkpoint written by oner_lab ({error})") from None
        missing = [key for key in ("model", "tower") if not isinstance(state, dict) or key not in state]
        if missing:
            raise ConfigError(
                KEY, str(path), f"allowed: a checkpoint written by oner_lab's trainer (it lacks {missing})"
            )
        tokenizer = TextTokenizer.from_str(state["tokenizer"]) if "tokenizer" in state else None
        return cls(path, state["tower"], state["model"], state.get("target", state["model"]), tokenizer)

    def check(self, config: RunConfig, tokenizer: TextTokenizer, tower: TowerConfig) -> None:
        """The child's tokenizer is the parent's and its tower has the parent's shape (vocabulary included)."""
        if self.tokenizer is not None and tokenizer.to_str() != self.tokenizer.to_str():
            raise ConfigError(
                "data.tokenizer", config.data.tokenizer, f"allowed: the tokenizer of {self.path}, or null to use it"
            )
        check_tower(self.tower, tower, str(self.path))
        if self.tower["vocab_size"] != tower.vocab_size:
            raise ConfigError(
                "data.tokenizer",
                config.data.tokenizer,
                f"allowed: a vocabulary of {self.tower['vocab_size']} tokens, as the tokenizer of {self.path}",
            )

    def load_into(self, model: torch.nn.Module, target: torch.nn.Module) -> None:
        model.load_state_dict(self.model)
        target.load_state_dict(self.target)


def start(
    config: RunConfig, run_dir: Path, init_checkpoint: Path | None, *, resuming: bool, is_main: bool
) -> tuple[TextTokenizer | None, Parent | None]:
    """The tokenizer a fine-tuning run uses, and its parent when it starts afresh (None when it resumes).

    `init_checkpoint` overrides `train.init_from` (the CLI resolves a variant name to its run's
    `last.pt`). The parent's tokenizer is copied to `<run_dir>/tokenizer/` (rank 0), so a resumed run
    and its MLflow artifact have it. The tokenizer returned is None when the run sets `data.tokenizer`:
    `prepare` loads that one and `Parent.check` compares it with the parent's (a checkpoint written
    before checkpoints held their tokenizer needs it set).
    """
    copy = run_dir / TOKENIZER_DIR
    if resuming:
        if config.data.tokenizer is not None:
            return None, None
        if not copy.is_dir():
            raise FileNotFoundError(
                f"{copy}: the tokenizer this run copied from its parent is gone; start the run afresh"
            )
        return TextTokenizer.load(copy), None
    init_from = config.train.init_from
    assert init_from is not None
    if init_checkpoint is None:
        if names_variant(init_from):
            raise ConfigError(
                KEY,
                init_from,
                "allowed: a checkpoint path when calling train.run directly; a variant name is resolved by "
                "`python -m oner_lab.run SPEC`, which passes its FINISHED run's checkpoint",
            )
        init_checkpoint = Path(init_from)
    parent = Parent.read(Path(init_checkpoint))
    if config.data.tokenizer is not None:
        return None, parent  # prepare loads it; Parent.check compares it with the parent's
    if parent.tokenizer is None:
        raise ConfigError(
            KEY,
            str(parent.path),
            "allowed: a checkpoint that holds its tokenizer (older ones do not), or set data.tokenizer to the "
            "tokenizer directory its run used (the run's MLflow artifact tokenizer/)",
        )
    tokenizer = parent.tokenizer
    if is_main:
        staging = run_dir / f".{TOKENIZER_DIR}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)  # left by a first start that ended before its first checkpoint
        tokenizer.save(staging)
        os.replace(staging, copy)
        tokenizer.directory = copy
    return tokenizer, parent
