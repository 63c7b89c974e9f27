"""What MLflow tracking costs a training step: MlflowRunLogger on a real SQLite store.

    python benchmarks/tracking_overhead.py [--step-ms 75] [--log-every 10] [--steps 2000]

Simulates a run whose steps take `--step-ms` (the clock is simulated, so the script runs in
seconds; the logger's own calls, flushes included, are timed for real) and reports the time
spent in the logger as a share of step time, next to the unbatched alternative (one MLflow
write per `log_metrics`). The budget (issue 3) is under 2% of step time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from oner_lab import tracking

KEYS = ("train/loss", "train/loss_itc", "train/loss_cmc", "train/loss_mlm", "train/loss_mim", "train/loss_mmm",
        "train/lr", "train/samples_per_s", "train/temperature")


def simulate(client: MlflowClient, experiment: str, steps: int, step_s: float, log_every: int, flush_every_s: float) -> float:
    """Seconds spent inside the logger over a simulated run of `steps` steps."""
    run_id = tracking.retry_locked(lambda: client.create_run(experiment)).info.run_id
    now = [0.0]
    logger = tracking.MlflowRunLogger(client, run_id, flush_every_s=flush_every_s, clock=lambda: now[0])
    spent = 0.0
    for step in range(1, steps + 1):
        now[0] += step_s
        if step % log_every == 0:
            started = time.perf_counter()
            logger.log_metrics({key: 1.0 / step for key in KEYS}, step)
            spent += time.perf_counter() - started
    started = time.perf_counter()
    logger.close()
    spent += time.perf_counter() - started
    assert len(client.get_metric_history(run_id, "train/loss")) == steps // log_every  # everything arrived
    return spent


def time_calls(client: MlflowClient, experiment: str, calls: int) -> tuple[float, float]:
    """(median seconds of a buffered `log_metrics`, median seconds of one flush of 5 s of metrics)."""
    run_id = client.create_run(experiment).info.run_id
    logger = tracking.MlflowRunLogger(client, run_id, flush_every_s=float("inf"), max_buffered=10**9)
    buffered = []
    for step in range(calls):
        started = time.perf_counter()
        logger.log_metrics({key: 1.0 for key in KEYS}, step)
        buffered.append(time.perf_counter() - started)
    flushes = []
    for step in range(calls, calls + 20 * 7, 7):  # 7 calls ~ 5 s of a 75 ms step logging every 10 steps
        for offset in range(7):
            logger.log_metrics({key: 1.0 for key in KEYS}, step + offset)
        started = time.perf_counter()
        logger.flush()
        flushes.append(time.perf_counter() - started)
    return statistics.median(buffered), statistics.median(flushes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-ms", type=float, default=75.0, help="simulated training step time")
    parser.add_argument("--log-every", type=int, default=10, help="steps between log_metrics calls")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    step_s = args.step_ms / 1000

    with tempfile.TemporaryDirectory() as directory:
        uri = f"sqlite:///{Path(directory) / 'mlflow.db'}"
        print(f"creating an MLflow store at {uri} ...")
        client = tracking.connect(uri)
        experiment = tracking.experiment_id(client, "tracking-overhead")

        per_call, per_flush = time_calls(client, experiment, 2000)
        print(f"log_metrics, buffered ({len(KEYS)} values): {per_call * 1e6:.1f} us median")
        print(f"flush of ~5 s of metrics ({7 * len(KEYS)} values, one log_batch): {per_flush * 1e3:.1f} ms median")

        run_s = args.steps * step_s
        print(f"\nsimulated run: {args.steps} steps x {args.step_ms:g} ms, log_metrics every {args.log_every} steps "
              f"({len(KEYS)} values each)")
        for label, log_every, flush_every_s in (
            ("batched, flush every 5 s (default)", args.log_every, 5.0),
            ("unbatched, one write per call", args.log_every, 0.0),
            ("batched, log_every=1 (worst case)", 1, 5.0),
        ):
            spent = simulate(client, experiment, args.steps, step_s, log_every, flush_every_s)
            print(f"  {label:38s} {spent * 1e3:8.1f} ms in the logger = {100 * spent / run_s:6.3f}% of step time")
        print("\nbudget: < 2% of step time")


if __name__ == "__main__":
    main()
