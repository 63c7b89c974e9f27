"""Attention on a CPU: SDPA's kernel against plain matmuls and a softmax, alone and in the full step.

    python benchmarks/attention_kernels.py [--threads 1 2] [--rounds 10] [--variants oner oner_cumulative]

`TowerAttention` (oner_lab/model/attention.py) skips SDPA on a CPU for sequences up to
`MATH_MAX_TOKENS`. This prints what that choice rests on: forward and backward of the attention
alone at the tiny preset's sequence lengths and beyond (batch 128, 4 heads of 24, as the tiny tower;
then wider heads), and the tiny preset's full training step with each kernel, one step of each in
turn so that the machine's drifting speed falls on both alike (medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import oner_lab.model.attention as attention

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import build  # noqa: E402

# (batch, heads, tokens, head width): the tiny tower's image, text and joint passes, then wider heads
SHAPES = [(128, 4, 10, 24), (128, 4, 21, 24), (128, 4, 30, 24), (64, 6, 57, 64), (8, 6, 128, 64), (8, 6, 237, 64)]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return attention.plain_attention(q, k, v, mask, q.shape[-1] ** -0.5)


def alternate(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each callable, called in turn `rounds` times after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def kernels(rounds: int) -> None:
    print(f"{'batch':>5} {'heads':>5} {'tokens':>6} {'width':>5} {'SDPA ms':>8} {'plain ms':>8} {'speed-up':>8}")
    for batch, heads, tokens, width in SHAPES:
        q, k, v = (torch.randn(batch, heads, tokens, width, requires_grad=True) for _ in range(3))
        mask = torch.ones(batch, 1, tokens, tokens, dtype=torch.bool)
        mask[:, :, :, -3:] = False  # padding keys, as text rows have
        mask |= torch.eye(tokens, dtype=torch.bool)
        grad = torch.randn(batch, heads, tokens, width)
        med = alternate(
            {name: lambda fn=fn: fn(q, k, v, mask).backward(grad) for name, fn in (("sdpa", sdpa), ("plain", plain))},
            rounds,
        )
        print(
            f"{batch:>5} {heads:>5} {tokens:>6} {width:>5} {med['sdpa'] * 1e3:>8.2f} {med['plain'] * 1e3:>8.2f} "
            f"{med['sdpa'] / med['plain']:>7.2f}x"
        )


def steps(variants: list[str], rounds: int) -> None:
    shipped = attention.MATH_MAX_TOKENS
    print(f"{'variant':<16} {'SDPA s/step':>11} {'plain s/step':>12} {'speed-up':>8}")
    for variant in variants:
        step = build("tiny", variant, 128, torch.device("cpu"))

        def with_limit(limit: int) -> Callable[[], None]:
            def run() -> None:
                attention.MATH_MAX_TOKENS = limit
                step()

            return run

        med = alternate({"sdpa": with_limit(0), "plain": with_limit(shipped)}, rounds)
        attention.MATH_MAX_TOKENS = shipped
        print(f"{variant:<16} {med['sdpa']:>11.3f} {med['plain']:>12.3f} {med['sdpa'] / med['plain']:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=10, help="calls of each, alternating (median taken)")
    parser.add_argument("--variants", nargs="+", default=["oner", "oner_cumulative"])
    args = parser.parse_args()
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s), torch {torch.__version__}, float32, forward and backward")
        kernels(args.rounds)
        steps(args.variants, args.rounds)


if __name__ == "__main__":
    main()
