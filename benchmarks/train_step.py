"""Throughput of a full OneR training step per preset, beside this machine's plain matmul FLOP/s.

    python benchmarks/train_step.py [--presets tiny vit_s16] [--variant oner] [--steps 5]

A step is what `Trainer.train_step` does after the data arrive: every pass of the variant,
backward, AdamW, EMA update. FLOPs are counted by torch's FlopCounterMode on one step (matmuls
and attention, under SDPA's math backend; the count is exact for those ops), so achieved FLOP/s =
counted FLOPs / step time.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from oner_lab.model import OneTower, ema_update, momentum_copy, tower_config
from oner_lab.objectives import (
    VARIANTS,
    Objective,
    StepInputs,
    ViewSettings,
    masked_views,
    resolve_terms,
)

DEFAULT_BATCH = {
    "cpu": {"tiny": 128, "vit_s16": 8, "vit_b16": 4},
    "cuda": {"tiny": 1024, "vit_s16": 256, "vit_b16": 128},
}


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Plain square matmul FLOP/s in this process: the machine's practical ceiling."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(preset: str, variant: str, batch: int, device: torch.device):
    cfg = tower_config(preset, vocab_size=30522 if preset != "tiny" else 512, head=VARIANTS[variant].head)
    model = OneTower(cfg).to(device)
    target = momentum_copy(model)
    weights = resolve_terms(variant, {}, True)
    settings = ViewSettings(masked_views(weights), False, "momentum", 0.15, 0.6, 103, cfg.vocab_size, torch.arange(5))
    objective = Objective(weights, settings).to(device)
    params = [p for m in (model, objective) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    ids = torch.randint(5, cfg.vocab_size, (batch, cfg.max_text_len), device=device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, cfg.max_text_len * 3 // 4 :] = False
    inputs = StepInputs(images, images.flip(-1), ids, mask)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            total, _ = objective(model, target, inputs, torch.Generator().manual_seed(0))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update(target, model, 0.99)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "vit_s16"])
    parser.add_argument("--variant", default="oner")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="default: per preset and device")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_flops(device, dtype)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
        f"plain {dtype} matmul: {peak / 1e12:.3f} TFLOP/s"
    )
    print(
        f"{'preset':<8} {'variant':<16} {'batch':>6} {'step s':>8} {'samples/s':>10} {'GFLOP/step':>11} {'TFLOP/s':>8} {'of matmul':>9}"
    )
    for preset in args.presets:
        batch = args.batch or DEFAULT_BATCH[device.type][preset]
        step = build(preset, args.variant, batch, device)
        step()  # warm-up (allocator, kernels)
        counter = FlopCounterMode(display=False)
        with sdpa_kernel(SDPBackend.MATH), counter:  # attention counted: no formula for the CPU flash kernel
            step()
        flops = counter.get_total_flops()
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        seconds = (time.perf_counter() - start) / args.steps
        achieved = flops / seconds
        print(
            f"{preset:<8} {args.variant:<16} {batch:>6} {seconds:>8.3f} {batch / seconds:>10.1f} "
            f"{flops / 1e9:>11.1f} {achieved / 1e12:>8.3f} {achieved / peak:>8.1%}"
        )


if __name__ == "__main__":
    main()
