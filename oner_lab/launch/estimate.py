"""What a run will cost before it is sent anywhere: training FLOPs, wall time and GPU-hours.

FLOPs come from `cost.count` (the real model and terms on meta tensors, so a ViT-B/16 batch of
4096 costs a second to count). Time is FLOPs over what the device sustains: its dense peak times a
model-FLOPs utilisation (MFU) from the table in launch/devices.py, each figure with its source, measured
where the lab has measured it and marked assumed where it has not. On a CPU the peak is not a
datasheet figure but this machine's plain float32 matmul rate, measured in a fraction of a second,
and the MFU is the share of it a real run reached (benchmarks/cost_estimate.py measures both).

Left out: evaluation passes, data start-up, checkpoints and requeues (docs/cost.md says how large
they are); the estimate is for the training steps, all of them, whatever a resume has done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.table import Table

from oner_lab import cost
from oner_lab.launch.devices import DEVICES, Device, device
from oner_lab.spec import PlannedRun


def matmul_flops(threads: int | None = None, size: int = 512, rounds: int = 80, seconds: float = 0.05) -> float:
    """This CPU's plain float32 matmul rate with `threads` intra-op threads (the run's `train.threads`):
    the best of short rounds over four seconds, so a moment of other load on the machine does not count.
    On the shared 2-core CI machine the two-thread rate was 38-41 GFLOP/s most of the time, with
    bursts at 57-64 a few seconds long every 3-7 s; in a 20 s trace, 57% of one-second spans held no burst,
    20% of four-second ones."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        best = 0.0
        for _ in range(rounds):
            done, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                a @ b
                done += 1
            best = max(best, 2 * size**3 * done / elapsed)
        return best
    finally:
        torch.set_num_threads(previous)


BF16_ACTIVATIONS = 0.6
"""Activation bytes under bf16 autocast over float32 (assumed: matmul outputs are bf16, layer norms and
the losses stay float32; not measured on a GPU yet)."""
HEADROOM = 0.9
"""Share of a card's memory a rank may plan to use: the rest is CUDA's context, NCCL's buffers and the
allocator's fragmentation."""
GIB = 2**30


@dataclass(frozen=True)
class RankMemory:
    """Peak memory of one DDP rank during a training step, in bytes, by what holds it."""

    weights: float
    """The model's float32 parameters, and the objective's."""
    momentum: float
    """The EMA target's float32 copy."""
    optimizer: float
    """AdamW's two float32 moments per trained parameter."""
    activations: float
    """The step's live tensors at this rank's share of the batch: activations (bf16 or float32) and
    the float32 gradients."""

    @property
    def total(self) -> float:
        return self.weights + self.momentum + self.optimizer + self.activations


def rank_memory(counted: cost.Cost, world_size: int, bf16: bool) -> RankMemory:
    """What one of `world_size` ranks holds at its step's peak (cost.count measured the global batch)."""
    gradients = 4.0 * counted.params_trainable
    activations = max(0.0, counted.activation_bytes - gradients) / world_size
    if bf16:
        activations *= BF16_ACTIVATIONS
    return RankMemory(
        weights=4.0 * counted.params_total,
        momentum=4.0 * counted.momentum_params,
        optimizer=8.0 * counted.params_trainable,
        activations=activations + gradients,
    )


@dataclass(frozen=True)
class RunEstimate:
    """One run's training cost on `devices` devices of one kind."""

    run_name: str
    flops_per_step: int
    steps: int
    device: Device
    devices: int
    sustained_flops: float
    """FLOP/s of one device: peak x MFU."""
    memory: RankMemory
    """Peak memory of one rank (one device)."""

    @property
    def total_flops(self) -> float:
        return float(self.flops_per_step) * self.steps

    @property
    def step_s(self) -> float:
        return self.flops_per_step / (self.sustained_flops * self.devices)

    @property
    def wall_h(self) -> float:
        return self.step_s * self.steps / 3600

    @property
    def device_hours(self) -> float:
        return self.wall_h * self.devices


def estimate(run: PlannedRun, device_name: str, devices: int = 1, cpu_flops: float | None = None) -> RunEstimate:
    """The training cost of `run` on `devices` x `device_name` (`cpu_flops`: a measured matmul rate)."""
    found = device(device_name)
    peak = found.peak_flops
    if peak is None:
        peak = cpu_flops if cpu_flops is not None else matmul_flops(run.config.train.threads)
    counted = cost.count(run.config)
    bf16 = run.config.train.precision == "bf16" or (
        run.config.train.precision == "auto" and found.peak_flops is not None
    )
    memory = rank_memory(counted, devices, bf16)
    return RunEstimate(
        run.run_name, counted.flops_per_step, run.config.train.steps, found, devices, peak * found.mfu, memory
    )


def fits(one: RunEstimate) -> bool:
    """Whether a rank's peak fits its card with headroom (always, on a CPU: no card to size)."""
    return one.device.memory_gb is None or one.memory.total <= HEADROOM * one.device.memory_gb * 1e9


def memory_problem(run: PlannedRun, one: RunEstimate, gpus_per_node: int, nodes: int) -> str | None:
    """Why `run` cannot fit its card ("needs about ..."), and the settings that would make it fit; None when
    it fits. The text does not name the run: the seeds of one variant share it."""
    if fits(one):
        return None
    card = one.device
    options = []
    for more in range(nodes + 1, 65):
        world = more * gpus_per_node
        if run.config.train.batch_size % world == 0 and fits(estimate(run, card.name, world)):
            options.append(f"launcher.slurm.nodes: {more}")
            break
    if not run.config.train.activation_checkpointing:
        train = run.config.train.model_copy(update={"activation_checkpointing": True})
        recomputing = replace(run, config=run.config.model_copy(update={"train": train}))
        if fits(estimate(recomputing, card.name, one.devices)):
            options.append("train.activation_checkpointing: true")
    bigger = [
        other.name
        for other in DEVICES.values()
        if other.memory_gb and other.memory_gb > card.memory_gb and one.memory.total <= HEADROOM * other.memory_gb * 1e9
    ]
    if bigger:
        options.append(f"a profile with bigger cards ({', '.join(bigger)})")
    memory = one.memory
    return (
        f"needs about {memory.total / GIB:.0f} GiB per GPU (weights {memory.weights / GIB:.1f}, "
        f"momentum copy {memory.momentum / GIB:.1f}, AdamW {memory.optimizer / GIB:.1f}, activations and gradients "
        f"{memory.activations / GIB:.0f} at {run.config.train.batch_size // one.devices} samples per GPU), more than "
        f"{HEADROOM:.0%} of the {card.memory_gb:g} GB of one {card.name}; "
        + (f"options that fit: {'; or '.join(options)}" if options else "no setting of nodes or recomputation fits")
        + " (docs/cost.md)"
    )


def estimate_all(
    planned: Sequence[PlannedRun],
    device_name: str,
    devices: int = 1,
    progress: Callable[[str], object] | None = None,
) -> list[RunEstimate]:
    """Every run's estimate; the CPU's matmul rate is measured once per thread setting.

    `progress` hears what is being done before each slow part (the 4 s matmul measurement; a FLOP
    count, seconds per config when it is not cached), so that a waiting CLI can say why it waits."""
    say = progress or (lambda _: None)
    rates: dict[int | None, float] = {}
    estimates = []
    for number, run in enumerate(planned, 1):
        cpu_flops = None
        if device(device_name).peak_flops is None:
            threads = run.config.train.threads
            if threads not in rates:
                say(f"Measuring this CPU's float32 matmul rate at {threads or torch.get_num_threads()} threads (4 s)")
                rates[threads] = matmul_flops(threads)
            cpu_flops = rates[threads]
        say(f"Counting training FLOPs per step on meta tensors: {run.run_name} ({number}/{len(planned)})")
        estimates.append(estimate(run, device_name, devices, cpu_flops))
    return estimates


def where(backend: str, gpus_per_node: int = 0, gpu: str | None = None, world_size: int = 1) -> tuple[str, int, str]:
    """(device name in the table, devices per run, what the table's caption says) of a launcher:
    a SLURM profile's card times its GPUs, a CPU job's ranks, or this machine for a local run."""
    if backend == "slurm" and gpus_per_node:
        if gpu is None:
            raise KeyError("the cluster profile names no `gpu`; add one of the cost table's names to it (docs/cost.md)")
        device(gpu)
        return gpu, world_size, f"{world_size} x {gpu}"
    if torch.cuda.is_available():
        raise KeyError(f"a local run here trains on {torch.cuda.get_device_name()}, which the estimate does not place")
    return "cpu", world_size, f"{world_size} x this machine's CPU" if world_size > 1 else "this machine's CPU"


class StepTimes:
    """A `RunLogger` keeping only the training loop's own throughput windows (`train/samples_per_s`):
    what an estimate is checked against (benchmarks/cost_estimate.py, tests/test_cost_estimate.py)."""

    def __init__(self) -> None:
        self.samples_per_s: list[float] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if "train/samples_per_s" in metrics:
            self.samples_per_s.append(metrics["train/samples_per_s"])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _hours(hours: float) -> str:
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.1f} h"


def _amount(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


def cost_table(estimates: Sequence[RunEstimate], placed: str) -> Table:
    """Per run and in total: FLOPs per step, total FLOPs, wall time and device-hours (docs/cost.md)."""
    first = estimates[0].device
    kind = "measured for training steps" if first.measured else "assumed, end to end"
    table = Table(
        title=f"Estimated training cost on {placed}",
        caption=f"at {first.mfu:.0%} model-FLOPs utilisation, {kind} (oner_lab/launch/devices.py; docs/cost.md)",
    )
    for column in ("run", "FLOPs/step", "steps", "FLOPs", "wall time", "device-hours", "memory/rank"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for one in estimates:
        table.add_row(
            one.run_name,
            _si(one.flops_per_step, "FLOP"),
            str(one.steps),
            _si(one.total_flops, "FLOP"),
            _hours(one.wall_h),
            _amount(one.device_hours),
            f"{one.memory.total / GIB:.1f} GiB" + ("" if fits(one) else " (too big)"),
        )
    total_flops = sum(one.total_flops for one in estimates)
    total_hours = sum(one.device_hours for one in estimates)
    table.add_section()
    table.add_row(f"total ({len(estimates)} runs)", "", "", _si(total_flops, "FLOP"), "", _amount(total_hours), "")
    return table


__all__ = [
    "RankMemory",
    "RunEstimate",
    "StepTimes",
    "cost_table",
    "estimate",
    "estimate_all",
    "fits",
    "matmul_flops",
    "memory_problem",
    "rank_memory",
    "where",
]
