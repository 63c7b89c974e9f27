"""How close the cost estimate is to a real CPU run, and the CPU's MFU figure the estimate uses.

    python benchmarks/cost_estimate.py [--variant oner] [--steps 60] [--batch 128]

Trains one run of experiments/ablation.yaml's built-in recipe (tiny preset) for `--steps` steps with
the real training loop, takes the step time the loop itself logs (`train/samples_per_s`: its fastest
window of `log_every` steps, the machine at full speed, as the matmul rate is its best round), and prints beside it: the counted FLOPs per step, this machine's
float32 matmul rate, the MFU the run reached against that rate (the `cpu` figure of
oner_lab/launch/estimate.py's table comes from here) and the estimate's step time and error.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from oner_lab import train
from oner_lab.launch import estimate
from oner_lab.spec import expand, load_spec, parse_only


def measure(variant: str, steps: int, batch: int, log_every: int = 10) -> tuple[estimate.RunEstimate, float]:
    """(the estimate, the measured seconds per step) of one real run of the ablation recipe."""
    overrides = [f"base.train.steps={steps}", f"base.train.batch_size={batch}", f"base.train.log_every={log_every}"]
    overrides += ["base.eval.every_steps=null"]
    spec = load_spec("experiments/ablation.yaml", overrides=overrides)
    (run,) = expand(spec, parse_only(f"variant={variant},seed=0"))
    guess = estimate.estimate(run, "cpu")
    times = estimate.StepTimes()
    with tempfile.TemporaryDirectory() as folder:
        train.run(run.config, Path(folder) / "run", times)
    measured = batch / max(times.samples_per_s)
    print(f"  {variant}: windows {[round(x) for x in times.samples_per_s]} samples/s", flush=True)
    return guess, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["itc", "oner", "oner_cumulative"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    rate = estimate.matmul_flops()
    table = estimate.device("cpu")
    print(f"float32 matmul rate here: {rate / 1e9:.1f} GFLOP/s; table's cpu MFU {table.mfu} ({table.source})")
    print(f"{'variant':<16} {'GFLOP/step':>10} {'measured s':>10} {'MFU here':>9} {'estimate s':>10} {'error':>7}")
    for variant in args.variants:
        guess, measured = measure(variant, args.steps, args.batch)
        mfu = guess.flops_per_step / measured / rate
        print(
            f"{variant:<16} {guess.flops_per_step / 1e9:>10.2f} {measured:>10.3f} {mfu:>9.3f} "
            f"{guess.step_s:>10.3f} {guess.step_s / measured - 1:>+7.1%}"
        )


if __name__ == "__main__":
    main()
