"""The trainer: validation, resume equivalence, non-finite loss, a micro run that learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from oner_lab import train
from oner_lab.checkpoint import load
from oner_lab.contract import ConfigError, Interrupted
from oner_lab.embedding_sample import EmbeddingSample
from oner_lab.spec.config import RunConfig


class ListLogger:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[tuple[Path, str | None]] = []
        self.flushed_at: list[int] = []

    def log_metrics(self, metrics, step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def flush(self) -> None:
        self.flushed_at.append(self.metrics[-1][0] if self.metrics else 0)


class StopAt:
    """Asks the loop to stop once it reaches `step` (what a preemption signal does)."""

    def __init__(self, step: int, trainer_steps: list[int]) -> None:
        self.step = step
        self.calls = trainer_steps

    def should_stop(self) -> bool:
        self.calls.append(1)
        return len(self.calls) >= self.step


def micro_config(cache: Path, **train) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"width": 32, "depth": 1, "num_heads": 2, "proj_dim": 16},
            "objective": {"variant": "oner"},
            "data": {
                "cache_dir": str(cache),
                "train_size": 96,
                "eval_images": 8,
                "cls_images_per_class": 1,
                "vocab_size": 120,
            },
            "train": {"batch_size": 8, "steps": 6, "warmup_steps": 2, "checkpoint_every": 3, "log_every": 1, **train},
            "eval": {"batch_size": 64},
        }
    )


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load(run_dir / "checkpoints" / "last.pt")
    assert state is not None
    return {**{f"m.{k}": v for k, v in state["model"].items()}, **{f"t.{k}": v for k, v in state["target"].items()}}


@pytest.mark.parametrize("stop_after", [3, 4])
def test_resumed_run_ends_with_the_same_parameters(tmp_path: Path, stop_after: int) -> None:
    config = micro_config(tmp_path / "cache")
    straight = train.run(config, tmp_path / "straight")
    with pytest.raises(Interrupted) as stopped:
        train.run(config, tmp_path / "resumed", control=StopAt(stop_after, []))
    assert stopped.value.step == stop_after
    logger = ListLogger()
    resumed = train.run(config, tmp_path / "resumed", logger)
    assert logger.metrics[0][0] == stop_after + 1  # continued, not restarted
    assert logger.flushed_at == [6]  # flushed right after the final checkpoint (steps 3 and 6 checkpoint)
    early = EmbeddingSample.load(tmp_path / "straight" / "embeddings" / "early.npz")
    assert early.step == 1 and early.eval_set == "shapes"  # a tenth of 6 steps, at least one
    assert (tmp_path / "resumed" / "embeddings" / "final.npz", "embeddings") in logger.artifacts
    finals = [EmbeddingSample.load(tmp_path / name / "embeddings" / "final.npz") for name in ("straight", "resumed")]
    assert finals[0].step == finals[1].step == 6 and np.array_equal(finals[0].joint, finals[1].joint)
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["eval/shapes/tr_r1"] == straight["eval/shapes/tr_r1"]


def test_a_stopped_run_resumes_under_other_operational_settings(tmp_path: Path) -> None:
    """Device and logging/checkpoint cadence are not the run's identity (same hash), so its checkpoint
    must take them: the resumed run ends bit for bit where the uninterrupted one does. (`train.threads`
    is operational too, but changes float reduction order, so it is not compared bitwise here; and
    torch's thread count is process-wide, so setting it would leak into later tests.)"""
    config = micro_config(tmp_path / "cache", steps=4)
    straight = train.run(config, tmp_path / "straight")
    with pytest.raises(Interrupted):
        train.run(config, tmp_path / "moved", control=StopAt(2, []))
    moved = micro_config(tmp_path / "cache", steps=4, device="cpu", log_every=3, checkpoint_every=1)
    resumed = train.run(moved, tmp_path / "moved")
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "moved")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert resumed["eval/shapes/tr_r1"] == straight["eval/shapes/tr_r1"]


def test_a_run_stopped_mid_window_logs_the_same_window_means_once_resumed(tmp_path: Path) -> None:
    """A preemption between two logged windows: the steps already trained in the window travel in the
    checkpoint, so every logged `train/` mean equals the uninterrupted run's (the rate aside)."""
    config = micro_config(tmp_path / "cache", steps=8, log_every=4, checkpoint_every=8)
    straight = ListLogger()
    train.run(config, tmp_path / "straight", straight)
    with pytest.raises(Interrupted):
        train.run(config, tmp_path / "resumed", ListLogger(), control=StopAt(2, []))
    resumed = ListLogger()
    train.run(config, tmp_path / "resumed", resumed)
    rate = ("train/samples_per_s", "train/threads")

    def windows(logger: ListLogger) -> dict[int, dict[str, float]]:
        return {
            step: {k: v for k, v in metrics.items() if k.startswith("train/") and k not in rate}
            for step, metrics in logger.metrics
            if "train/loss" in metrics
        }

    assert sorted(windows(straight)) == [4, 8]
    assert windows(resumed) == windows(straight)


def test_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    config = micro_config(tmp_path / "cache", steps=3)
    train.run(config, tmp_path / "run")
    other = micro_config(tmp_path / "cache", steps=4, lr=5e-4)
    with pytest.raises(RuntimeError, match="different config"):
        train.run(other, tmp_path / "run")


def test_non_finite_loss_names_step_and_term_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    # lr grows 100 per step (warm-up towards 1e12): the loss goes non-finite a few steps in
    config = micro_config(
        tmp_path / "cache", lr=1e12, min_lr=0.0, warmup_steps=10**10, grad_clip=None, checkpoint_every=1, steps=20
    )
    with pytest.raises(train.NonFiniteLossError, match=r"step \d+ in term") as error:
        train.run(config, tmp_path / "run")
    state = load(tmp_path / "run" / "checkpoints" / "last.pt.1")  # last.pt (the failing step's weights) was moved aside
    assert state is not None
    assert f"at step {state['step'] + 1} " in str(error.value)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_micro_run_loss_falls_and_reports_every_metric(tmp_path: Path) -> None:
    config = micro_config(tmp_path / "cache", steps=30, lr=2e-3, warmup_steps=3, checkpoint_every=30)
    config.objective.variant = "itc"
    config.model.width = 48
    logger = ListLogger()
    final = train.run(config, tmp_path / "run", logger)
    losses = [m["train/loss"] for _, m in logger.metrics if "train/loss" in m]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    for key in (
        "eval/shapes/tr_r1",
        "eval/shapes/ir_r5",
        "eval/shapes_cls/top1",
        "eval/shapes/modality_gap",
        "train/loss_itc",
        "train/loss_mlm",
        "train/loss_mim",
        "train/samples_per_s",
        "data/skipped_samples",
    ):
        assert key in final
    assert logger.artifacts and logger.artifacts[0][1] == "tokenizer" and logger.artifacts[0][0].is_dir()
    tables = [path for path, where in logger.artifacts if where == "eval"]
    assert len(tables) == 1 and json.loads(tables[0].read_text())["step"] == 30
    table = json.loads(tables[0].read_text())
    assert [path.name for path, where in logger.artifacts if where == "embeddings"] == ["early.npz", "final.npz"]
    assert [EmbeddingSample.load(path).step for path, where in logger.artifacts if where == "embeddings"] == [3, 30]
    assert table["sets"]["shapes"]["tr_r1"] == final["eval/shapes/tr_r1"]
    assert table["sets"]["shapes_cls"]["top1"] == final["eval/shapes_cls/top1"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"objective": {"variant": "onerr"}}, "objective.variant"),
        ({"objective": {"variant": None, "terms": {"itcc": 1.0}}}, "objective.terms.itcc"),
        ({"model": {"image_size": 30}}, "model.image_size"),
        ({"model": {"width": 30, "num_heads": 4}}, "model.width"),
        ({"objective": {"variant": "itc_two_heads"}}, "model.head"),
        ({"model": {"head": "per_modality"}, "objective": {"variant": None, "terms": {"cmc": 1.0}}}, "model.head"),
        ({"data": {"tokenizer": "/nonexistent/tokenizer"}}, "data.tokenizer"),
        ({"eval": {"sets": ["coco"]}}, "eval.sets"),
        ({"objective": {"variant": None, "terms": {"itc": 0.0}}}, "objective.terms"),
    ],
)
def test_invalid_configs_name_the_key(tmp_path: Path, override: dict, key: str) -> None:
    base = micro_config(tmp_path / "cache").model_dump()
    for section, values in override.items():
        base[section].update(values)
    config = RunConfig.model_validate(base)
    with pytest.raises(ConfigError) as error:
        train.validate(config)
    assert error.value.key == key
    assert not (tmp_path / "cache").exists()  # nothing was generated


def test_negative_weight_is_rejected_by_the_schema() -> None:
    with pytest.raises(ValueError, match="objective.terms|terms"):
        RunConfig.model_validate({"objective": {"terms": {"itc": -1.0}}})
