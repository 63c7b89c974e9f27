"""What leaving the last block's unread rows out of a CPU step saves, per ablation variant.

    python benchmarks/unread_rows.py [--threads 1] [--rounds 5] [--variants itc oner ...]

Each pass of a step runs its last block on the positions its terms read (model/packing.py): a clean
or momentum pass its [CLS], MIM its masked patches, MLM its chosen tokens. This times each variant's
full training step (every pass, backward, AdamW, EMA; the tiny preset at batch 128, captions filling
15 of 20 positions) with that on, and with every row read as before, one step of each in turn in one
process, and prints the best round of each: the machine's drift reaches both alike.
"""

from __future__ import annotations

import argparse
import time

import torch
from train_step import build

from oner_lab.model import OneTower
from oner_lab.objectives import VARIANTS

_forward = OneTower.forward


def _reading_every_row(self: OneTower, *args, reads=None, **kwargs):
    """`OneTower.forward` as it ran before the lever: every position's final state computed."""
    return _forward(self, *args, **kwargs)


def timed(step, every_row: bool) -> float:
    OneTower.forward = _reading_every_row if every_row else _forward
    try:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    finally:
        OneTower.forward = _forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="1: the ablation's two runs at a time on 2 cores")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"tiny preset, batch 128, {args.threads} thread(s), best of {args.rounds} alternating rounds")
    print(f"{'variant':<16} {'every row s':>12} {'read rows s':>12} {'speed-up':>9}")
    totals = [0.0, 0.0]
    for variant in args.variants:
        torch.manual_seed(0)
        step = build("tiny", variant, 128, torch.device("cpu"))
        for every_row in (True, False):  # warm-up: the allocator's pools for both shapes
            timed(step, every_row)
        best = [float("inf"), float("inf")]
        for _ in range(args.rounds):
            for i, every_row in enumerate((True, False)):
                best[i] = min(best[i], timed(step, every_row))
        totals = [t + b for t, b in zip(totals, best, strict=True)]
        print(f"{variant:<16} {best[0]:>12.3f} {best[1]:>12.3f} {best[0] / best[1]:>8.2f}x")
    print(f"{'all':<16} {totals[0]:>12.3f} {totals[1]:>12.3f} {totals[0] / totals[1]:>8.2f}x")


if __name__ == "__main__":
    main()
