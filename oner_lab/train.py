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
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from oner_lab import checkpoint, cost, embedding_sample, finetune, plugins
from oner_lab.contract import ConfigError, Interrupted, RunControl, RunLogger
from oner_lab.data import DataBundle, check_config, prepare
from oner_lab.data.tokenizer import TextTokenizer
from oner_lab.distributed import (
    DistInfo,
    barrier,
    env_ranks,
    gpus_requested,
    init_from_env,
    select_device,
)
from oner_lab.evaluate import evaluate
from oner_lab.grad_sync import GradientSync, StepReport
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
    TermOptions,
    ViewSettings,
    masked_views,
    resolve_terms,
    terms_training,
)
from oner_lab.phases import PhaseClock
from oner_lab.seeds import global_seed, step_seed
from oner_lab.spec.config import ObjectiveConfig, RunConfig
from oner_lab.spec.errors import SpecError
from oner_lab.spec.identity import canonical
from oner_lab.spec.legacy import upgrade
from oner_lab.spec.validation import validate as validate_section


class NonFiniteLossError(RuntimeError):
    """A term became NaN/inf (or parameters/optimizer state did); the last good checkpoint is kept."""


class LossSpikeError(RuntimeError):
    """The loss jumped past `train.loss_spike_factor` times its running median; the last checkpoint is kept."""


SPIKE_WINDOW = 100
"""Steps whose losses form the running median of the loss-spike guard."""
SPIKE_MIN_HISTORY = 5
"""Steps the guard waits for before judging (the first losses of a run fall fast)."""


PROGRESS_ENV = "ONER_PROGRESS_S"


def progress_interval_s() -> float:
    """Seconds between progress-bar lines: 0.1 on a terminal; in a log file (a SLURM job's stderr) 30,
    or $ONER_PROGRESS_S, so a week-long run's log holds a line per 30 s rather than one per step."""
    if sys.stderr.isatty():
        return 0.1
    return float(os.environ.get(PROGRESS_ENV, "30"))


def resolve_tower(config: RunConfig, vocab_size: int = 30522) -> TowerConfig:
    """The preset with the config's overrides applied."""
    overrides = config.model.model_dump(exclude={"preset"})
    return tower_config(config.model.preset, vocab_size=vocab_size, **overrides)


def same_identity(logged: dict, config: RunConfig) -> bool:
    """Whether a checkpoint's config is the same run as `config`: operational fields (device, workers,
    cadences) may differ, so a stopped run resumes on other hardware (`oner_lab.spec.identity`)."""
    try:
        return canonical(RunConfig.model_validate(upgrade(logged))) == canonical(config)
    except ValidationError:
        return False


def validate(config: RunConfig, files: bool = True) -> None:
    """Every check that needs the project's code; raises `ConfigError` before any work starts.

    `files=False` leaves out every check that reads the data, tokenizer or checkpoint files."""
    plugins.load(config.plugins)
    tower = resolve_tower(config)
    if tower.image_size % tower.patch_size:
        raise ConfigError(
            "model.image_size", tower.image_size, f"must be divisible by model.patch_size ({tower.patch_size})"
        )
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
        raise ConfigError(
            "model.head",
            tower.head,
            f"variant {obj.variant!r} is defined with model.head: {VARIANTS[obj.variant].head}",
        )
    joint = sorted(name for name in weights if TERMS[name].joint_head)
    if tower.head == "per_modality" and joint:
        raise ConfigError("model.head", tower.head, f"terms {joint} need model.head: shared")
    term_options(obj, weights)
    if obj.temperature_min > obj.temperature_init:
        raise ConfigError(
            "objective.temperature_min",
            obj.temperature_min,
            f"at most objective.temperature_init ({obj.temperature_init})",
        )
    if config.train.min_lr > config.train.lr:
        raise ConfigError("train.min_lr", config.train.min_lr, f"at most train.lr ({config.train.lr})")
    for key, section, view in (
        ("data.text_only", config.data.text_only, "T"),
        ("data.image_only", config.data.image_only, "I"),
    ):
        trainers = terms_training(view)
        if section is not None and not set(trainers) & set(weights):
            names = " or ".join(trainers) or "(none registered)"
            raise ConfigError(
                key,
                section.urls,
                f"unpaired data is trained by the {names} term only, which this run lacks ({sorted(weights)})",
            )
    check_config(config.data, config.eval.sets, files)
    if files:
        finetune.validate(config)


def term_options(obj: ObjectiveConfig, weights: dict[str, float]) -> dict[str, TermOptions]:
    """Each active term's typed options from `objective.options.<term>` (SpecError naming the key)."""
    for name in obj.options:
        if name not in TERMS:
            raise SpecError(
                None, f"objective.options.{name}", "names no objective term", ", ".join(sorted(TERMS)), value=name
            )
    return {
        name: validate_section(
            TERMS[name].options, obj.options.get(name, {}), file=None, prefix=("objective", "options", name)
        )
        for name in weights
    }


def build_objective(
    obj: ObjectiveConfig, weights: dict[str, float], mask_id: int, vocab_size: int, special_ids: torch.Tensor
) -> Objective:
    """The step's objective from the config's objective section: the one place that wires it (the
    trainer, and `cost.count` on meta tensors, build it here)."""
    settings = ViewSettings(
        masked_views=masked_views(weights),
        contrast_masked_views=obj.contrast_masked_views,
        targets=obj.targets,
        mlm_prob=obj.mlm_prob,
        mim_ratio=obj.mim_ratio,
        mask_id=mask_id,
        vocab_size=vocab_size,
        special_ids=special_ids,
    )
    return Objective(
        weights, settings, obj.temperature_init, obj.temperature_min, obj.learn_temperature, term_options(obj, weights)
    )


def lr_at(step: int, config: RunConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(t.steps - t.warmup_steps, 1)
    return t.min_lr + (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0))) / 2


def pick_device(name: str, dist_info: DistInfo) -> torch.device:
    """This rank's device for `train.device` (see `distributed.select_device` for the task layouts)."""
    return select_device(
        name,
        local_rank=dist_info.local_rank,
        world_size=dist_info.world_size,
        visible=torch.cuda.device_count(),
        gpus_requested=gpus_requested(),
    )


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

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        dist_info: DistInfo,
        init_checkpoint: Path | None = None,
        clock: PhaseClock | None = None,
    ) -> None:
        self.started = time.perf_counter()  # wall time of this session: data, training and evaluation
        self.clock = clock or PhaseClock()
        self.config = config
        self.run_dir = run_dir
        self.dist = dist_info
        t = config.train
        self.device = pick_device(t.device, dist_info)
        if t.threads:
            torch.set_num_threads(t.threads)
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        if config.train.batch_size % dist_info.world_size:
            raise ConfigError(
                "train.batch_size", t.batch_size, f"divisible by the number of ranks ({dist_info.world_size})"
            )
        for key, section in (("data.text_only", config.data.text_only), ("data.image_only", config.data.image_only)):
            if section is not None and section.batch_size % dist_info.world_size:
                raise ConfigError(
                    f"{key}.batch_size",
                    section.batch_size,
                    f"divisible by the number of ranks ({dist_info.world_size})",
                )
        tower = resolve_tower(config)
        self.checkpoint_path = run_dir / "checkpoints" / "last.pt"
        if dist_info.is_main:
            checkpoint.sweep_stale(self.checkpoint_path.parent)
        kept_tokenizer, self.parent = (
            finetune.start(
                config,
                run_dir,
                init_checkpoint,
                resuming=bool(checkpoint.history(self.checkpoint_path)),
                is_main=dist_info.is_main,
            )
            if t.init_from
            else (None, None)
        )
        # eval sets on rank 0 only, which alone evaluates: the other ranks hold none of them
        eval_sets = config.eval.sets if dist_info.is_main else []
        with self.clock("data"):
            self.data: DataBundle = prepare(
                config.data, tower.image_size, tower.max_text_len, eval_sets, kept_tokenizer
            )
        if self.device.type == "cuda":
            self.data.train = self.data.train.to(
                self.device
            )  # in-memory data: crops on the GPU; streamed data: decode threads crop in uint8, the GPU normalises
            self.data.unpaired.to(self.device)
        tokenizer = self.data.tokenizer
        self.tower_cfg = replace(tower, vocab_size=tokenizer.vocab_size)
        if self.parent is not None:
            self.parent.check(config, tokenizer, self.tower_cfg)
        with self.clock("build"):
            self._build(config, tokenizer)

    def _build(self, config: RunConfig, tokenizer: TextTokenizer) -> None:
        """The tower, its momentum copy, the objective and AdamW."""
        t = config.train
        torch.manual_seed(t.seed)  # identical initial weights on every rank and every resume
        self.model = OneTower(self.tower_cfg).to(self.device)
        self.model.activation_checkpointing = t.activation_checkpointing
        self.target = momentum_copy(self.model)
        if t.compile:  # in place: parameter names and checkpoints stay as they are
            self.model.compile_blocks()
            self.target.compile_blocks()
        obj = config.objective
        self.weights = resolve_terms(obj.variant, obj.terms, obj.masked_terms)
        self.objective = build_objective(
            obj, self.weights, tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids
        ).to(self.device)
        self.params = [p for m in (self.model, self.objective) for p in m.parameters() if p.requires_grad]
        self.grad_sync = GradientSync(self.params)
        self.optimizer = torch.optim.AdamW(
            param_groups([self.model, self.objective], t.weight_decay),
            lr=t.lr,
            betas=t.betas,
            fused=self.device.type == "cuda",
        )
        self.step = 0
        self.saved_step: int | None = None  # step of the checkpoint this process wrote last
        self.loss_history: dict[str, list[float]] = {}  # the loss-spike guard's window, per term and total
        # the scalars of the steps since the last logged window; in the checkpoint, so that a run stopped
        # mid-window logs, once resumed, the same window means as a run that never stopped
        self.log_window: dict[str, list[float]] = {}

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
            "loss_history": {key: list(values) for key, values in self.loss_history.items()},
            "log_window": {key: list(values) for key, values in self.log_window.items()},
        }

    def save(self) -> None:
        """Writes the checkpoint (rank 0), after checking on every rank that what it holds is finite."""
        self.check_finite_state()
        if self.dist.is_main:
            checkpoint.save_atomic(self.state(), self.checkpoint_path, keep=self.config.train.keep_checkpoints)
            checkpoint.prune(self.checkpoint_path, self.config.train.keep_checkpoints)
        self.saved_step = self.step
        barrier()

    def uncompiled(self) -> contextlib.AbstractContextManager:
        """Evaluation and the embedding sample run the blocks eager under `train.compile`.

        Their batch sizes are not the step's: at the second shape a block meets, dynamo compiles a
        shape-generic graph and runs it from then on, for the step's passes too. A run resumed mid-way
        meets the sample's shape at another step than the straight run did, so its kernels, and its
        rounding, differed from there (an H200, the built-in oner run: loss 6.8409 resumed against
        6.8389 straight after 200 steps). Compiling shape-generic graphs from the start instead cost
        a third of the compiled step's speed there (docs/gpu.md)."""
        return torch.compiler.set_stance("force_eager") if self.config.train.compile else contextlib.nullcontext()

    @torch.no_grad()
    def log_embeddings(self, log: RunLogger | None, when: str) -> None:
        """Embeds the fixed t-SNE sample (`oner_lab.embedding_sample`) into `run_dir/embeddings/<when>.npz`
        and logs it, so the analysis draws the figure from tracking alone. Main rank only."""
        found = embedding_sample.retrieval_set(self.data.eval_sets)
        if found is None:
            return
        self.model.eval()
        try:
            with self.autocast, self.uncompiled():
                sample = embedding_sample.embed(self.model, *found, self.step, self.device)
        finally:
            self.model.train()
        path = sample.save(self.run_dir / embedding_sample.ARTIFACT_DIR / f"{when}.npz")
        if log is not None:
            log.log_artifact(path, embedding_sample.ARTIFACT_DIR)

    def check_finite_state(self) -> None:
        """Raises NonFiniteLossError naming the first parameter or optimizer state that is NaN/inf:
        such a state is never written over the last good checkpoint."""
        named = [(f"model.{k}", v) for k, v in self.model.state_dict().items()]
        named += [(f"target.{k}", v) for k, v in self.target.state_dict().items()]
        named += [(f"objective.{k}", v) for k, v in self.objective.state_dict().items()]
        for index, param_state in self.optimizer.state_dict()["state"].items():
            named += [(f"optimizer.state[{index}].{k}", v) for k, v in param_state.items() if torch.is_tensor(v)]
        tensors = [(name, v) for name, v in named if v.is_floating_point()]
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(v).all() for _, v in tensors]).cpu()
        if not finite.all():
            bad = [name for (name, _), ok in zip(tensors, finite.tolist()) if not ok]
            raise NonFiniteLossError(
                f"non-finite state at step {self.step} in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; "
                f"not saved: {self.good_checkpoint_note()}"
            )

    def good_checkpoint_note(self) -> str:
        found = checkpoint.history(self.checkpoint_path)
        return f"the last good checkpoint is kept at {found[0]}" if found else "this run has no good checkpoint yet"

    def quarantine_checkpoint(self) -> str:
        """The checkpoint written at this very step holds the weights that gave a non-finite loss: it is
        moved to `last.pt.nonfinite` (kept to inspect, never resumed from). Returns what the error says."""
        if self.saved_step != self.step or not self.dist.is_main or not self.checkpoint_path.exists():
            return self.good_checkpoint_note()
        bad = self.checkpoint_path.with_name(f"{self.checkpoint_path.name}.nonfinite")
        os.replace(self.checkpoint_path, bad)
        return f"the checkpoint of this step (its weights give this loss) was moved to {bad}; {self.good_checkpoint_note()}"

    def start(self) -> None:
        """Resume from this run's last checkpoint; failing that, a fine-tuning run takes its parent's weights."""
        with self.clock("checkpoint"):
            resumed = self.resume()
        if not resumed and self.parent is not None:
            self.parent.load_into(self.model, self.target)
        self.parent = None  # its weights are copied (or not needed): free them for the rest of the run

    def resume(self) -> bool:
        """Load the newest checkpoint of this run directory that loads, if any; refuses another config's.

        A newest file that does not load (truncated, garbage) is skipped with a warning naming it; when
        none loads the run fails naming them all (it never restarts from step 0 over them)."""
        found = checkpoint.load_newest(self.checkpoint_path)
        if found is None:
            return False
        state, path = found
        if not same_identity(state["config"], self.config):
            raise RuntimeError(f"{path} was written by a different config; use another run directory")
        self.model.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"])
        self.loss_history = {key: list(values) for key, values in state.get("loss_history", {}).items()}
        self.log_window = {key: list(values) for key, values in state.get("log_window", {}).items()}
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
            batch.images,
            batch.images_target,
            batch.text_ids,
            batch.text_mask,
            extra.text_ids,
            extra.text_mask,
            extra.images,
        )
        generator = torch.Generator().manual_seed(step_seed(t.seed, self.step, self.dist.rank))
        torch.manual_seed(global_seed(t.seed, self.step, self.dist.rank))  # drop-path: per rank, per step
        lr = lr_at(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            total, values = self.objective(self.model, self.target, inputs, generator)
        temperature = self.objective.temperature_tensor()  # the one this step's logits used
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()  # gradient buckets are all-reduced while it runs (grad_sync.py)
        report = self.grad_sync.step_report([*values.values(), total], same=[temperature])
        self.check_finite(report, list(values))
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        self.optimizer.step()
        obj = self.config.objective
        ema_update(self.target, self.model, momentum_at(self.step, t.steps, obj.momentum, obj.momentum_end))
        self.step += 1
        *term_losses, total_loss = report.losses  # each rank's loss covers its share of the global batch: their mean
        scalars = {"train/loss": total_loss, "train/lr": lr, "train/temperature": report.same[0]}
        scalars.update({f"train/loss_{name}": value for name, value in zip(values, term_losses)})
        if t.loss_spike_factor is not None:
            self.check_spike(
                {"total": total_loss, **dict(zip(values, term_losses))}, self.step - 1, t.loss_spike_factor
            )
        return scalars

    def check_finite(self, report: StepReport, names: list[str]) -> None:
        """Raise `NonFiniteLossError` on every rank when any rank's loss is not finite, before the
        optimizer step, so the weights never take a NaN.

        Masked terms differ per rank, so one rank alone can see a NaN; the flags come from the step's one
        all-reduce (`GradientSync.step_report`), so every rank raises the same error at the same step
        instead of the others waiting in the next collective until the process-group timeout."""
        if not any(report.non_finite):
            return
        ranks = f" on rank(s) {', '.join(str(r) for r in report.ranks)}" if self.dist.world_size > 1 else ""
        bad = [name for name, flag in zip(names, report.non_finite) if flag] or ["total"]
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step}{ranks} in term(s) {', '.join(bad)}; {self.quarantine_checkpoint()}"
        )

    def check_spike(self, losses: dict[str, float], step: int, factor: float) -> None:
        """Raises LossSpikeError when the total loss exceeds `factor` x the median of the last
        SPIKE_WINDOW steps, naming the terms that spiked (every rank sees the same reduced losses)."""
        history = self.loss_history.get("total", [])
        if len(history) >= SPIKE_MIN_HISTORY and losses["total"] > factor * statistics.median(history):
            terms = [
                f"{name} {value:.4g} (median {statistics.median(self.loss_history[name]):.4g})"
                for name, value in losses.items()
                if name != "total"
                and len(self.loss_history.get(name, [])) >= SPIKE_MIN_HISTORY
                and value > factor * statistics.median(self.loss_history[name])
            ]
            raise LossSpikeError(
                f"loss spike at step {step}: total {losses['total']:.4g} > {factor} x median {statistics.median(history):.4g} "
                f"of the last {len(history)} steps; term(s) {', '.join(terms) or 'none alone (the sum spiked)'} "
                f"(train.loss_spike_factor); {self.good_checkpoint_note()}"
            )
        for name, value in losses.items():
            window = self.loss_history.setdefault(name, [])
            window.append(value)
            del window[:-SPIKE_WINDOW]

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Zero-shot metrics, computed on rank 0 (the only rank holding the eval sets; no collective
        runs inside the encoders); the other ranks wait at a barrier and return the data counts only."""
        self.model.eval()
        try:
            with self.autocast, self.uncompiled():
                metrics = (
                    evaluate(
                        self.model.encode_image,
                        self.model.encode_text,
                        self.data.eval_sets,
                        batch_size=self.config.eval.batch_size,
                        device=self.device,
                    )
                    if self.dist.is_main
                    else {}
                )
        finally:
            self.model.train()
        barrier()
        metrics["data/skipped_samples"] = float(self.data.skipped_samples)
        metrics.update({f"data/{kind}_samples": float(n) for kind, n in self.data.unpaired.sample_counts().items()})
        return metrics

    # --- the loop -----------------------------------------------------------------------
    def fit(self, logger: RunLogger | None, control: RunControl | None) -> dict[str, float]:
        t, every = self.config.train, self.config.eval.every_steps
        log = logger if self.dist.is_main else None
        with self.clock("tracking"):
            if self.dist.is_main and self.step == 0:
                self.log_artifacts(log)
            self.log_cost(log)
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            desc="train",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
            mininterval=progress_interval_s(),
        )
        window_start, window_samples = time.perf_counter(), 0  # the rate counts this process's steps only
        last: dict[str, float] = {}
        self.model.train()
        while self.step < t.steps:
            with self.clock("steps"):
                scalars = self.train_step()
            for key, value in scalars.items():
                self.log_window.setdefault(key, []).append(value)
            window_samples += t.batch_size
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == t.steps:
                elapsed = time.perf_counter() - window_start
                last = {key: sum(v) / len(v) for key, v in self.log_window.items()}
                last["train/samples_per_s"] = window_samples / max(elapsed, 1e-9)
                if self.device.type == "cpu":  # local runs sharing the machine split its CPUs (launch/cpu_share.py)
                    last["train/threads"] = float(torch.get_num_threads())
                bar.set_postfix(  # no refresh of its own: the bar's interval decides when a line is written
                    loss=f"{last['train/loss']:.3f}", samples_s=f"{last['train/samples_per_s']:.0f}", refresh=False
                )
                if log:
                    with self.clock("tracking"):
                        log.log_metrics(last, self.step)
                self.log_window, window_start, window_samples = {}, time.perf_counter(), 0
            if every and self.step % every == 0 and self.step < t.steps:
                with self.clock("eval"):
                    metrics = self.evaluate()
                if log:
                    with self.clock("tracking"):
                        log.log_metrics(metrics, self.step)
            if self.step == max(1, t.steps // 10) and self.dist.is_main:  # the paper's t-SNE: 4 of 40 epochs
                with self.clock("embeddings"):
                    self.log_embeddings(log, embedding_sample.EARLY)
            stop = control is not None and control.should_stop()
            if self.step % t.checkpoint_every == 0 or self.step == t.steps or stop:
                if log:  # before the checkpoint: a step the checkpoint covers is never lost from MLflow
                    with self.clock("tracking"):
                        log.flush()
                with self.clock("checkpoint"):
                    self.save()
            if stop and self.step < t.steps:
                bar.close()
                raise Interrupted(self.step)
        bar.close()
        with self.clock("eval"):
            metrics = self.evaluate()
        if self.dist.is_main:
            with self.clock("embeddings"):
                self.log_embeddings(log, embedding_sample.FINAL)
        with self.clock("tracking"):
            if log:
                log.log_artifact(self.write_eval_table(metrics), "eval")
        metrics["time/session_s"] = time.perf_counter() - self.started
        metrics.update(self.clock.metrics())
        if log:
            log.log_metrics(metrics, self.step)
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
    clock: PhaseClock | None = None,
) -> dict[str, float]:
    """Train `config` in `run_dir` (resuming from its last checkpoint) and return final metrics.

    `init_checkpoint`: the parent checkpoint of a fine-tuning run (`train.init_from`), as the CLI
    resolves a variant name; by default `train.init_from` is taken as a path. `clock`: the job's,
    which already holds its start-up time."""
    clock = clock or PhaseClock()
    with clock("startup"):
        plugins.load(config.plugins)
        validate(config)
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        ranks = env_ranks()
        dist_info = init_from_env(pick_device(config.train.device, ranks))  # the GPU is bound before any CUDA work
    trainer = Trainer(config, run_dir, dist_info, Path(init_checkpoint) if init_checkpoint else None, clock)
    trainer.start()
    return trainer.fit(logger, control)


__all__ = ["LossSpikeError", "NonFiniteLossError", "Trainer", "lr_at", "resolve_tower", "run", "validate"]
