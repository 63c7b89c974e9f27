"""The training loop: `run(config, run_dir)` is the one function every launcher calls.

Contract (kept stable for the orchestration layer):
- `validate(config)` raises `ConfigError` naming the key for anything that cannot run.
- `run(config, run_dir, logger=None, control=None) -> dict[str, float]` trains, resuming from
  `run_dir/checkpoints/last.pt` when it exists, logs `train/*` and `eval/*` metrics through
  `logger` (rank 0 only), and returns the final metrics.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from oner_lab import checkpoint, cost, finetune
from oner_lab.data import DataBundle, check_config, prepare
from oner_lab.distributed import DistInfo, average_gradients, barrier, init_from_env
from oner_lab.evaluate import evaluate
from oner_lab.hooks import ConfigError, Interrupted, RunControl, RunLogger
from oner_lab.model import (
    OneTower,
    TowerConfig,
    ema_update,
    momentum_at,
    momentum_copy,
    tower_config,
)
from oner_lab.objectives import (
    TERMS,
    VARIANTS,
    Objective,
    StepInputs,
    ViewSettings,
    resolve_terms,
)
from oner_lab.spec.config import RunConfig

JOINT_HEAD_TERMS = frozenset({"cmc"})  # their left side is a joint view: no per-modality head for it


class NonFiniteLossError(RuntimeError):
    """A term became NaN/inf; the last good checkpoint is kept."""


def resolve_tower(config: RunConfig, vocab_size: int = 30522) -> TowerConfig:
    """The preset with the config's overrides applied."""
    overrides = config.model.model_dump(exclude={"preset"})
    return tower_config(config.model.preset, vocab_size=vocab_size, **overrides)


def validate(config: RunConfig, files: bool = True) -> None:
    """Every check that needs the project's code; raises `ConfigError` before any work starts.

    `files=False` leaves out every check that reads the data, tokenizer or checkpoint files."""
    tower = resolve_tower(config)
    if tower.image_size % tower.patch_size:
        raise ConfigError("model.image_size", tower.image_size, f"must be divisible by model.patch_size ({tower.patch_size})")
    if tower.width % tower.num_heads:
        raise ConfigError("model.width", tower.width, f"must be divisible by model.num_heads ({tower.num_heads})")
    obj = config.objective
    if obj.variant is not None and obj.variant not in VARIANTS:
        raise ConfigError("objective.variant", obj.variant, f"allowed: {', '.join(VARIANTS)}")
    for name in obj.terms:
        if name not in TERMS:
            raise ConfigError(f"objective.terms.{name}", name, f"allowed terms: {', '.join(sorted(TERMS))}")
    weights = resolve_terms(obj.variant, obj.terms, obj.masked_terms)
    if not weights:
        raise ConfigError("objective.terms", obj.terms, "at least one term with a positive weight (or a variant)")
    if obj.variant and VARIANTS[obj.variant].head != tower.head:
        raise ConfigError("model.head", tower.head, f"variant {obj.variant!r} is defined with model.head: {VARIANTS[obj.variant].head}")
    if tower.head == "per_modality" and JOINT_HEAD_TERMS & set(weights):
        raise ConfigError("model.head", tower.head, f"terms {sorted(JOINT_HEAD_TERMS & set(weights))} need model.head: shared")
    if obj.temperature_min > obj.temperature_init:
        raise ConfigError("objective.temperature_min", obj.temperature_min, f"at most objective.temperature_init ({obj.temperature_init})")
    if config.train.min_lr > config.train.lr:
        raise ConfigError("train.min_lr", config.train.min_lr, f"at most train.lr ({config.train.lr})")
    for key, section, term in (("data.text_only", config.data.text_only, "mlm"), ("data.image_only", config.data.image_only, "mim")):
        if section is not None and term not in weights:
            raise ConfigError(key, section.urls, f"unpaired data is trained by the {term} term only, which this run lacks ({sorted(weights)})")
    check_config(config.data, config.eval.sets, files)
    if files:
        finetune.validate(config)


def lr_at(step: int, config: RunConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(t.steps - t.warmup_steps, 1)
    return t.min_lr + (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0))) / 2


def pick_device(name: str, dist_info: DistInfo) -> torch.device:
    if name == "auto":
        return torch.device("cuda", dist_info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def param_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, positional tables, tokens and the temperature."""
    decay, no_decay = [], []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 and param.shape[0] > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Holds one run's model, optimiser and data; `fit` runs the loop, `evaluate` the zero-shot sets."""

    def __init__(self, config: RunConfig, run_dir: Path, dist_info: DistInfo, init_checkpoint: Path | None = None) -> None:
        self.started = time.perf_counter()  # wall time of this session: data, training and evaluation
        self.config = config
        self.run_dir = run_dir
        self.dist = dist_info
        t = config.train
        self.device = pick_device(t.device, dist_info)
        if t.threads:
            torch.set_num_threads(t.threads)
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        )
        if config.train.batch_size % dist_info.world_size:
            raise ConfigError("train.batch_size", t.batch_size, f"divisible by the number of ranks ({dist_info.world_size})")
        for key, section in (("data.text_only", config.data.text_only), ("data.image_only", config.data.image_only)):
            if section is not None and section.batch_size % dist_info.world_size:
                raise ConfigError(f"{key}.batch_size", section.batch_size, f"divisible by the number of ranks ({dist_info.world_size})")
        tower = resolve_tower(config)
        self.checkpoint_path = run_dir / "checkpoints" / "last.pt"
        kept_tokenizer, self.parent = finetune.start(
            config, run_dir, init_checkpoint, resuming=self.checkpoint_path.exists(), is_main=dist_info.is_main
        ) if t.init_from else (None, None)
        self.data: DataBundle = prepare(config.data, tower.image_size, tower.max_text_len, config.eval.sets, kept_tokenizer)
        if self.device.type == "cuda":
            self.data.train = self.data.train.to(self.device)  # in-memory data: crops on the GPU; streamed data: decode threads crop in uint8, the GPU normalises
            self.data.unpaired.to(self.device)
        tokenizer = self.data.tokenizer
        self.tower_cfg = replace(tower, vocab_size=tokenizer.vocab_size)
        if self.parent is not None:
            self.parent.check(config, tokenizer, self.tower_cfg)
        torch.manual_seed(t.seed)  # identical initial weights on every rank and every resume
        self.model = OneTower(self.tower_cfg).to(self.device)
        self.target = momentum_copy(self.model)
        obj = config.objective
        self.weights = resolve_terms(obj.variant, obj.terms, obj.masked_terms)
        settings = ViewSettings(
            active_terms=frozenset(self.weights),
            contrast_masked_views=obj.contrast_masked_views,
            targets=obj.targets,
            mlm_prob=obj.mlm_prob,
            mim_ratio=obj.mim_ratio,
            mask_id=tokenizer.mask_id,
            vocab_size=tokenizer.vocab_size,
            special_ids=tokenizer.special_ids,
        )
        self.objective = Objective(
            self.weights, settings, obj.temperature_init, obj.temperature_min, obj.learn_temperature
        ).to(self.device)
        self.params = [p for m in (self.model, self.objective) for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            param_groups([self.model, self.objective], t.weight_decay), lr=t.lr, betas=t.betas,
            fused=self.device.type == "cuda",
        )
        self.step = 0

    # --- checkpoints --------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "target": self.target.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": checkpoint.rng_state(),
            "config": self.config.model_dump(mode="json"),
            "tower": asdict(self.tower_cfg),
            "tokenizer": self.data.tokenizer.to_str(),  # a run started from this checkpoint keeps the vocabulary
        }

    def save(self) -> None:
        if self.dist.is_main:
            checkpoint.save_atomic(self.state(), self.checkpoint_path)
        barrier()

    def save_early(self) -> None:
        """Weights at a tenth of training (the paper's t-SNE compares 4 of 40 epochs with the end)."""
        state = {k: v for k, v in self.state().items() if k in ("step", "model", "target", "config", "tower")}
        checkpoint.save_atomic(state, self.run_dir / "checkpoints" / "early.pt")

    def start(self) -> None:
        """Resume from this run's last checkpoint; failing that, a fine-tuning run takes its parent's weights."""
        if not self.resume() and self.parent is not None:
            self.parent.load_into(self.model, self.target)
        self.parent = None  # its weights are copied (or not needed): free them for the rest of the run

    def resume(self) -> bool:
        """Load the last checkpoint of this run directory, if any; refuses another config's."""
        state = checkpoint.load(self.checkpoint_path)
        if state is None:
            return False
        if state["config"] != self.config.model_dump(mode="json"):
            raise RuntimeError(
                f"{self.checkpoint_path} was written by a different config; use another run directory"
            )
        self.model.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"])
        self.step = state["step"]
        return True

    # --- one step -----------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimisation step on the global batch of `self.step`; returns its scalars."""
        t = self.config.train
        batch = self.data.train.batch(self.step, t.batch_size, t.seed, self.dist.rank, self.dist.world_size)
        batch = batch.to(self.device)
        extra = self.data.unpaired.batch(self.step, t.seed, self.dist.rank, self.dist.world_size).to(self.device)
        inputs = StepInputs(
            batch.images, batch.images_target, batch.text_ids, batch.text_mask, extra.text_ids, extra.text_mask, extra.images
        )
        generator = torch.Generator().manual_seed(hash((t.seed, self.step, self.dist.rank)) & 0x7FFF_FFFF)
        lr = lr_at(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            total, values = self.objective(self.model, self.target, inputs, generator)
        if not torch.isfinite(total):
            bad = [name for name, v in values.items() if not torch.isfinite(v)] or ["total"]
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step} in term(s) {', '.join(bad)}; "
                f"the last good checkpoint is kept at {self.checkpoint_path}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        average_gradients(self.params)
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        self.optimizer.step()
        obj = self.config.objective
        ema_update(self.target, self.model, momentum_at(self.step, t.steps, obj.momentum, obj.momentum_end))
        self.step += 1
        losses = torch.stack([loss.detach().float() for loss in (total, *values.values())])
        if self.dist.world_size > 1:  # each rank's loss covers its share of the global batch: log their mean
            torch.distributed.all_reduce(losses)
            losses /= self.dist.world_size
        total_loss, *term_losses = losses.tolist()
        scalars = {"train/loss": total_loss, "train/lr": lr, "train/temperature": self.objective.temperature()}
        scalars.update({f"train/loss_{name}": value for name, value in zip(values, term_losses)})
        return scalars

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        try:
            with self.autocast:
                metrics = evaluate(
                    self.model.encode_image, self.model.encode_text, self.data.eval_sets,
                    batch_size=self.config.eval.batch_size, device=self.device,
                )
        finally:
            self.model.train()
        metrics["data/skipped_samples"] = float(self.data.skipped_samples)
        metrics.update({f"data/{kind}_samples": float(n) for kind, n in self.data.unpaired.sample_counts().items()})
        return metrics

    # --- the loop -----------------------------------------------------------------------
    def fit(self, logger: RunLogger | None, control: RunControl | None) -> dict[str, float]:
        t, every = self.config.train, self.config.eval.every_steps
        log = logger if self.dist.is_main else None
        if self.dist.is_main and self.step == 0:
            self.log_artifacts(log)
        self.log_cost(log)
        bar = tqdm(
            total=t.steps, initial=self.step, desc="train", disable=not self.dist.is_main, dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else 30,  # a log file gets a line every 30 s, not every step
        )
        window: dict[str, list[float]] = {}
        window_start, window_samples = time.perf_counter(), 0
        last: dict[str, float] = {}
        self.model.train()
        while self.step < t.steps:
            scalars = self.train_step()
            for key, value in scalars.items():
                window.setdefault(key, []).append(value)
            window_samples += t.batch_size
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == t.steps:
                elapsed = time.perf_counter() - window_start
                last = {key: sum(v) / len(v) for key, v in window.items()}
                last["train/samples_per_s"] = window_samples / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{last['train/loss']:.3f}", samples_s=f"{last['train/samples_per_s']:.0f}")
                if log:
                    log.log_metrics(last, self.step)
                window, window_start, window_samples = {}, time.perf_counter(), 0
            if every and self.step % every == 0 and self.step < t.steps:
                metrics = self.evaluate()
                if log:
                    log.log_metrics(metrics, self.step)
            if self.step == max(1, t.steps // 10) and self.dist.is_main:
                self.save_early()
            stop = control is not None and control.should_stop()
            if self.step % t.checkpoint_every == 0 or self.step == t.steps or stop:
                self.save()
                if log:
                    log.flush()
            if stop and self.step < t.steps:
                bar.close()
                raise Interrupted(self.step)
        bar.close()
        metrics = self.evaluate()
        metrics["time/session_s"] = time.perf_counter() - self.started
        if log:
            log.log_metrics(metrics, self.step)
            log.log_artifact(self.write_eval_table(metrics), "eval")
        return {**last, **metrics, "train/steps": float(self.step)}

    def write_eval_table(self, metrics: dict[str, float]) -> Path:
        """The final zero-shot numbers as {eval set: {metric: value}} in run_dir/eval/final.json."""
        table: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            if key.startswith("eval/"):
                _, name, metric = key.split("/", 2)
                table.setdefault(name, {})[metric] = value
        path = self.run_dir / "eval" / "final.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"step": self.step, "sets": table}, indent=2))
        return path

    def log_cost(self, log: RunLogger | None) -> None:
        """Parameter count and FLOPs per step (cost.py, counted on meta tensors) as params, so the UI can
        put cost beside accuracy; a logger without `log_params` is skipped."""
        log_params = getattr(log, "log_params", None)
        if log_params is not None:
            log_params(cost.count(self.config, vocab_size=self.tower_cfg.vocab_size).as_params())

    def log_artifacts(self, log: RunLogger | None) -> None:
        if log is not None:
            log.log_artifact(self.data.tokenizer.directory, "tokenizer")


def run(
    config: RunConfig,
    run_dir: str | Path,
    logger: RunLogger | None = None,
    control: RunControl | None = None,
    init_checkpoint: str | Path | None = None,
) -> dict[str, float]:
    """Train `config` in `run_dir` (resuming from its last checkpoint) and return final metrics.

    `init_checkpoint`: the parent checkpoint of a fine-tuning run (`train.init_from`), as the CLI
    resolves a variant name; by default `train.init_from` is taken as a path."""
    validate(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device_type = "cuda" if config.train.device.startswith("cuda") or (
        config.train.device == "auto" and torch.cuda.is_available()
    ) else "cpu"
    dist_info = init_from_env(device_type)
    trainer = Trainer(config, run_dir, dist_info, Path(init_checkpoint) if init_checkpoint else None)
    trainer.start()
    return trainer.fit(logger, control)


__all__ = ["NonFiniteLossError", "Trainer", "lr_at", "resolve_tower", "run", "validate"]
