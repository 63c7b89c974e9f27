"""The GPU path end to end, on a CUDA machine: the numbers to quote before a first A100 job.

    python benchmarks/gpu_check.py [--batch 128] [--steps 10] [--run-steps 200] [--out DIR]

1. The full OneR step of the ablation's paper recipe (ViT-B/16, bf16 autocast, fused AdamW, EMA,
   the lab's gradient sync) at `--batch` samples per GPU, eager and with `train.compile`:
   samples/s, model-FLOPs utilisation against the card's dense bf16 peak (oner_lab/launch/devices.py),
   which scaled-dot-product-attention kernels ran, how many host syncs one step makes
   (`torch.cuda.set_sync_debug_mode`), and the peak memory against the dry run's estimate.
2. A real `train.run` of the built-in ablation recipe (`oner`, tiny preset) for `--run-steps` steps
   with evaluation and checkpoints, straight and stopped half-way then resumed: both must end on the
   same loss.
3. With two or more GPUs, the same run on 2 ranks (NCCL), against the one-rank run.

Prints a report and writes it as JSON to `--out` (default: $OUT when set, else the working directory).
Exits 1 without a usable CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch._dynamo.utils
import torch.multiprocessing as mp
from torch.utils.flop_counter import FlopCounterMode

from oner_lab import cost, train
from oner_lab.contract import Interrupted
from oner_lab.grad_sync import GradientSync
from oner_lab.launch import estimate
from oner_lab.launch.devices import DEVICES
from oner_lab.model import OneTower, ema_update, momentum_copy
from oner_lab.objectives import StepInputs, resolve_terms
from oner_lab.spec import expand, load_spec, parse_only

REPO = Path(__file__).resolve().parent.parent
ABLATION = REPO / "experiments" / "ablation.yaml"


def card() -> tuple[str, float | None]:
    """(the table's name for this GPU, its dense bf16 peak) by the device's name."""
    name = torch.cuda.get_device_name().lower()
    memory_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    for key, entry in (
        ("h200", "h200"),
        ("h100", "h100-80gb"),
        ("a100", "a100-80gb" if memory_gb > 50 else "a100-40gb"),
    ):
        if key in name:
            return entry, DEVICES[entry].peak_flops
    return name, None


def paper_config(variant: str, batch: int, compile_blocks: bool, device: str = "cuda"):
    """The ablation's paper recipe for `variant` at `batch` samples on this one GPU."""
    overrides = [
        f"base.train.batch_size={batch}",
        f"base.train.device={device}",
        f"base.train.compile={str(compile_blocks).lower()}",
    ]
    spec = load_spec(ABLATION, profile="paper", overrides=overrides)
    (run,) = expand(spec, parse_only(f"variant={variant},seed=0"))
    return run.config


def step_benchmark(
    variant: str,
    batch: int,
    steps: int,
    compile_blocks: bool,
    peak: float | None,
    device: torch.device,
    preset: str | None = None,
    tables: Path | None = None,
    compile_mode: str | None = None,
    dynamic: bool | None = None,
) -> dict:
    """One GPU's training step of the paper recipe on synthetic inputs of the recipe's shapes (`preset`: another
    tower, for a smoke run of this script on a CPU)."""
    config = paper_config(variant, batch, compile_blocks, device.type)
    if preset:
        config = config.model_copy(update={"model": config.model.model_copy(update={"preset": preset})})
    vocab = config.data.vocab_size
    tower = train.resolve_tower(config, vocab)
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = OneTower(tower).to(device)
    model.activation_checkpointing = config.train.activation_checkpointing
    target = momentum_copy(model)
    obj = config.objective
    weights = resolve_terms(obj.variant, obj.terms, obj.masked_terms)
    objective = train.build_objective(obj, weights, 103, vocab, torch.tensor([0, 101, 102, 103])).to(device)
    params = [p for m in (model, objective) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=gpu)
    sync = GradientSync(params)
    g = torch.Generator().manual_seed(0)
    size, length = tower.image_size, tower.max_text_len
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    ids = torch.randint(104, vocab, (batch, length), generator=g)
    lengths = torch.randint(8, length, (batch, 1), generator=g)
    mask = torch.arange(length)[None, :] < lengths
    ids = torch.where(mask, ids, torch.zeros_like(ids)).to(device)
    inputs = StepInputs(images, images.flip(-1), ids, mask.to(device))

    def step(seed: int) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            total, values = objective(model, target, inputs, torch.Generator().manual_seed(seed))
        temperature = objective.temperature_tensor()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        report = sync.step_report([*values.values(), total], same=[temperature])
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update(target, model, 0.999)
        return report.losses[-1]

    # FLOPs are counted on an eager step, before any compilation: a compiled block called under a dispatch
    # mode (FlopCounterMode is one) ran eager ever after on torch 2.11 (seen on an H200: no compiled kernel
    # in the profile, and the eager step time).
    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    if compile_blocks:  # as train.compile does
        model.compile_blocks(compile_mode, dynamic)
        target.compile_blocks(compile_mode, dynamic)
        torch._dynamo.utils.counters.clear()
    started = time.perf_counter()
    for seed in range(1, 4):  # warm-up: allocator, cuBLAS heuristics, and compilation when asked
        step(seed)
    wait(device)
    warm_s = time.perf_counter() - started
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gpu else [])
    with torch.profiler.profile(activities=activities, with_stack=tables is not None) as prof:
        step(4)
        wait(device)
    profiled = profile_summary(prof, gpu, tables)
    wait(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if gpu:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            step(5)
        finally:
            if gpu:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [
        str(w.message).splitlines()[0][:120]
        for w in caught
        if "synchroniz" in str(w.message).lower() and "prototype" not in str(w.message)
    ]
    wait(device)
    started = time.perf_counter()
    for seed in range(steps):
        loss = step(10 + seed)
    wait(device)
    seconds = (time.perf_counter() - started) / steps
    flops = counter.get_total_flops()
    counted = cost.count(config, vocab)
    estimated = estimate.rank_memory(counted, world_size=1, bf16=True)
    peak_bytes = torch.cuda.max_memory_allocated() if gpu else None
    dynamo = {
        group: dict(values)
        for group, values in torch._dynamo.utils.counters.items()
        if group in ("stats", "frames", "graph_break", "recompiles", "unimplemented") and values
    }
    return {
        "variant": variant,
        "compile": compile_blocks and (compile_mode or "default"),
        "dynamic": dynamic,
        "batch_per_gpu": batch,
        "step_s": seconds,
        "samples_per_s": batch / seconds,
        "tflop_per_step": flops / 1e12,
        "tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / peak if peak else None,
        "warmup_s": warm_s,
        **profiled,
        "host_syncs_per_step": len(syncs),
        "host_sync_sites": sorted(set(syncs)),
        "peak_memory_gib": peak_bytes / 2**30 if peak_bytes else None,
        "estimated_memory_gib": estimated.total / 2**30,
        "memory_error": estimated.total / peak_bytes - 1 if peak_bytes else None,
        "final_loss": loss,
        "dynamo": dynamo,
        "counted_tflop_per_step_on_meta": counted.flops_per_step / 1e12,
    }


ATTENTION_KINDS = (
    ("flash", ("flash",)),
    ("memory-efficient", ("mem_eff", "efficient_attention", "fmha")),
    ("cudnn", ("cudnn_sdpa", "cudnn")),
)


def profile_summary(prof: torch.profiler.profile, gpu: bool, tables: Path | None) -> dict:
    """What one profiled step ran: its attention kernels, its busiest kernels and how many compiled calls;
    with `tables`, the operator tables (which lines of the lab launch the kernels that take the time)."""
    averages = prof.key_averages()
    if tables is not None:
        order = "device_time_total" if gpu else "cpu_time_total"
        tables.write_text(
            averages.table(sort_by=order, row_limit=70, max_name_column_width=90)
            + "\n\n"
            + prof.key_averages(group_by_stack_n=6).table(sort_by=order, row_limit=50, max_name_column_width=90)
        )

    def self_device_ms(event) -> float:
        return getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0)) / 1e3

    on_device = [event for event in averages if event.device_type == torch.autograd.DeviceType.CUDA]
    attention_names = sorted(
        {
            event.key[:100]
            for event in on_device
            if any(mark in event.key.lower() for mark in ("attention", "fmha", "flash", "sdpa"))
        }
    )
    busiest = sorted(on_device, key=lambda event: -self_device_ms(event))[:15]
    return {
        "attention_kernels": sorted(
            {
                kind
                for kind, marks in ATTENTION_KINDS
                for name in attention_names
                if any(m in name.lower() for m in marks)
            }
        ),
        "attention_kernel_names": attention_names[:8],
        "top_kernels_ms": [(event.key[:100], round(self_device_ms(event), 3)) for event in busiest],
        "compiled_calls_in_profiled_step": sum(
            event.count for event in averages if event.key in ("CompiledFunction", "CompiledFunctionBackward")
        ),
    }


class _StopAt:
    """A `RunControl` that stops a run after `at` steps, as a preemption would (a checkpoint, then `Interrupted`)."""

    def __init__(self, at: int) -> None:
        self.at, self.steps = at, 0

    def should_stop(self) -> bool:
        self.steps += 1
        return self.steps >= self.at


def wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def builtin_config(steps: int, device: str = "cuda", compile_blocks: bool = False):
    overrides = [
        f"base.train.steps={steps}",
        f"base.train.compile={str(compile_blocks).lower()}",
        f"base.train.device={device}",
        f"base.eval.every_steps={steps // 2}",
        f"base.train.checkpoint_every={steps // 2}",
    ]
    (run,) = expand(load_spec(ABLATION, overrides=overrides), parse_only("variant=oner,seed=0"))
    return run.config


def real_run(steps: int, folder: Path, device: str = "cuda", compile_blocks: bool = False) -> dict:
    """The built-in recipe on the GPU: straight, and stopped a third of the way then resumed."""
    config = builtin_config(steps, device, compile_blocks)
    # Each run below empties dynamo's cache first, as its own process would: the blocks share one code object,
    # so a later run would otherwise start from the shape-generic graphs an earlier run left.
    times = estimate.StepTimes()
    started = time.perf_counter()
    torch._dynamo.reset()
    straight = train.run(config, folder / "straight", times)
    straight_s = time.perf_counter() - started
    try:
        torch._dynamo.reset()
        train.run(config, folder / "resumed", control=_StopAt(steps // 3))
        raise AssertionError("the stopped run was not interrupted")
    except Interrupted as stop:
        stopped_at = stop.step
    torch._dynamo.reset()
    resumed = train.run(config, folder / "resumed")
    keys = ("train/loss", "eval/shapes/rsum", "eval/shapes_cls/top1")
    return {
        "steps": steps,
        "compile": compile_blocks,
        "straight_s": straight_s,
        "samples_per_s_windows": [round(x) for x in times.samples_per_s],
        "stopped_at": stopped_at,
        "straight": {key: straight.get(key) for key in keys},
        "resumed": {key: resumed.get(key) for key in keys},
        "resumed_equal": all(straight.get(key) == resumed.get(key) for key in keys),
    }


def _rank(rank: int, world: int, port: int, steps: int, folder: str, results: dict) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    out = train.run(builtin_config(steps), Path(folder))
    if rank == 0:
        results["loss"] = out.get("train/loss")
        results["rsum"] = out.get("eval/shapes/rsum")
        results["samples_per_s"] = out.get("train/samples_per_s")


def two_ranks(steps: int, folder: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        started = time.perf_counter()
        mp.spawn(_rank, args=(2, port, steps, str(folder), results), nprocs=2, join=True)
        return {**dict(results), "wall_s": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="oner")
    parser.add_argument("--batch", type=int, default=128, help="samples per GPU (the paper profile's share: 4096 / 32)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the step benchmark")
    parser.add_argument("--run-steps", type=int, default=200)
    parser.add_argument("--compile-mode", default=None, help="torch.compile's mode for the compiled step")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--skip", nargs="*", default=[], choices=["eager", "compile", "run", "ranks"])
    parser.add_argument("--run-compiled", action="store_true", help="the real run with train.compile too")
    parser.add_argument("--dynamic", action="store_true", help="compile the step's blocks shape-generic")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run every part on the CPU at a small size (checks the script)"
    )
    args = parser.parse_args()
    if args.cpu_smoke:
        device = torch.device("cpu")
        report = {"device": "cpu (smoke run of the script)"}
        report["step_eager"] = step_benchmark(
            args.variant, 4, 1, False, None, device, preset="tiny", tables=Path(tempfile.gettempdir()) / "profile.txt"
        )
        with tempfile.TemporaryDirectory() as folder:
            report["run"] = real_run(args.run_steps, Path(folder), "cpu")
        print(json.dumps(report, indent=2, default=str))
        return 0
    device = torch.device("cuda")
    if not torch.cuda.is_available():
        from oner_lab.distributed import cuda_report

        print(f"no usable CUDA device: {cuda_report()}", file=sys.stderr)
        return 1
    name, peak = card()
    report: dict = {
        "device": torch.cuda.get_device_name(),
        "table_entry": name,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    print(json.dumps(report), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    def part(key: str, measure: Callable[[], dict]) -> None:
        """One part of the report; an error is reported and the next part still runs."""
        try:
            report[key] = measure()
        except Exception as error:  # noqa: BLE001 - the other parts still tell something
            where = traceback.format_exception(error)[-6:]
            report[key] = {"error": f"{type(error).__name__}: {error}", "where": "".join(where)[-3000:]}
        torch.cuda.empty_cache()
        print(key, json.dumps(report[key], default=str), flush=True)
        save()

    for mode in ("eager", "compile"):
        if mode not in args.skip:
            part(
                f"step_{mode}",
                lambda mode=mode: step_benchmark(
                    args.variant,
                    args.batch,
                    args.steps,
                    mode == "compile",
                    peak,
                    device,
                    tables=out / f"profile_{mode}.txt",
                    compile_mode=args.compile_mode,
                    dynamic=args.dynamic or None,
                ),
            )
    with tempfile.TemporaryDirectory() as folder:
        if "run" not in args.skip:
            part("run", lambda: real_run(args.run_steps, Path(folder) / "one"))
        if args.run_compiled:
            part("run_compiled", lambda: real_run(args.run_steps, Path(folder) / "compiled", compile_blocks=True))
        if "ranks" not in args.skip and torch.cuda.device_count() >= 2:
            part("two_ranks", lambda: two_ranks(args.run_steps, Path(folder) / "two"))
    save()
    print(f"report: {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
