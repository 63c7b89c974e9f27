"""What MLflow tracking costs a training step: MlflowRunLogger on a real store (SQLite, or a server).

    python benchmarks/tracking_overhead.py [--step-ms 75] [--log-every 10] [--steps 2000]
        [--uri http://10.77.0.1:5077] [--writers 16] [--write-s 10]

Simulates a run whose steps take `--step-ms` (the clock is simulated, so the script runs in
seconds; the logger's own calls, flushes included, are timed for real) and reports the time
spent in the logger as a share of step time, next to the unbatched alternative (one MLflow
write per `log_metrics`). The budget (issue 3) is under 2% of step time.

`--uri` measures against that store instead of a temporary SQLite file, e.g. the MLflow server of
`bash slurm/local-tracking.sh start` (PostgreSQL behind it): every call then is an HTTP request. With
`--writers N` it also reports the store's write throughput: N processes, each a run writing one
`log_batch` of one step's metrics after another for `--write-s` seconds, as N jobs logging with
ONER_MLFLOW_FLUSH_S=0 would; metric values/s over all writers, and every value read back.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from oner_lab import tracking

KEYS = (
    "train/loss",
    "train/loss_itc",
    "train/loss_cmc",
    "train/loss_mlm",
    "train/loss_mim",
    "train/loss_mmm",
    "train/lr",
    "train/samples_per_s",
    "train/temperature",
)


def simulate(
    client: MlflowClient, experiment: str, steps: int, step_s: float, log_every: int, flush_every_s: float
) -> float:
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


def write_for(uri: str, run_id: str, seconds: float, ready: Any, results: Any) -> None:
    """One writer process: connects and warms up (imports, first request), waits for every writer, then
    writes `log_batch` of one step's KEYS, step after step, for `seconds`; puts (steps, seconds) on `results`."""
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    client.get_run(run_id)
    ready.wait()
    started = time.perf_counter()
    step = 0
    while time.perf_counter() - started < seconds:
        step += 1
        stamp = int(time.time() * 1000)
        metrics = [Metric(key, 1.0 / step, stamp, step) for key in KEYS]
        tracking.retry_locked(lambda metrics=metrics: client.log_batch(run_id, metrics=metrics, synchronous=True))
    results.put((step, time.perf_counter() - started))


def write_throughput(uri: str, client: MlflowClient, experiment: str, writers: int, seconds: float) -> None:
    """Prints the store's write rate under `writers` concurrent runs, and checks every value arrived."""
    run_ids = [tracking.retry_locked(lambda: client.create_run(experiment)).info.run_id for _ in range(writers)]
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(writers), context.Queue()
    processes = [context.Process(target=write_for, args=(uri, run_id, seconds, ready, results)) for run_id in run_ids]
    for process in processes:
        process.start()
    done = [results.get() for _ in processes]
    for process in processes:
        process.join()
    steps = sum(count for count, _ in done)
    wall = max(spent for _, spent in done)
    found = sum(len(client.get_metric_history(run_id, key)) for run_id in run_ids for key in KEYS)
    print(f"\nwrite throughput: {writers} writers x {seconds:g} s, one log_batch of {len(KEYS)} values per step")
    print(
        f"  {steps} batches = {steps * len(KEYS)} values in {wall:.1f} s: {steps / wall:.0f} batches/s, "
        f"{steps * len(KEYS) / wall:.0f} values/s; {1e3 * writers * wall / steps:.1f} ms per batch seen by a writer"
    )
    print(f"  read back: {found} of {steps * len(KEYS)} values")
    for tracked in run_ids:
        tracking.end_run(client, tracked, tracking.FINISHED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-ms", type=float, default=75.0, help="simulated training step time")
    parser.add_argument("--log-every", type=int, default=10, help="steps between log_metrics calls")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--uri", help="tracking URI to measure (default: a temporary SQLite file)")
    parser.add_argument("--writers", type=int, default=0, help="also measure write throughput with this many processes")
    parser.add_argument("--write-s", type=float, default=10.0, help="seconds each writer writes")
    args = parser.parse_args()
    step_s = args.step_ms / 1000

    with tempfile.TemporaryDirectory() as directory:
        uri = args.uri or f"sqlite:///{Path(directory) / 'mlflow.db'}"
        print(f"{'using' if args.uri else 'creating'} the MLflow store at {uri} ...")
        client = tracking.connect(uri)
        # an experiment of its own each time: a server keeps what earlier measurements wrote
        experiment = tracking.experiment_id(client, f"tracking-overhead-{uuid.uuid4().hex[:8]}")

        per_call, per_flush = time_calls(client, experiment, 2000)
        print(f"log_metrics, buffered ({len(KEYS)} values): {per_call * 1e6:.1f} us median")
        print(f"flush of ~5 s of metrics ({7 * len(KEYS)} values, one log_batch): {per_flush * 1e3:.1f} ms median")

        run_s = args.steps * step_s
        print(
            f"\nsimulated run: {args.steps} steps x {args.step_ms:g} ms, log_metrics every {args.log_every} steps "
            f"({len(KEYS)} values each)"
        )
        for label, log_every, flush_every_s in (
            ("batched, flush every 5 s (default)", args.log_every, 5.0),
            ("unbatched, one write per call", args.log_every, 0.0),
            ("batched, log_every=1 (worst case)", 1, 5.0),
        ):
            spent = simulate(client, experiment, args.steps, step_s, log_every, flush_every_s)
            print(f"  {label:38s} {spent * 1e3:8.1f} ms in the logger = {100 * spent / run_s:6.3f}% of step time")
        print("\nbudget: < 2% of step time")
        if args.writers:
            write_throughput(uri, client, experiment, args.writers, args.write_s)


if __name__ == "__main__":
    main()
