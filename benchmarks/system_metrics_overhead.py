"""What MLflow system metrics cost a training step, at the built-in ablation's sizes.

    python benchmarks/system_metrics_overhead.py [--spec experiments/ablation.yaml] [--variant oner]
                                                 [--steps 30] [--samples 10]

1. Times training steps of the spec's run (the built-in ablation: tiny tower, batch 128, shapes).
2. Times the sampler itself: `system_metrics.NodeMonitor` (MLflow's monitor, as every training job
   starts it) on a real SQLite store, 1 s apart, while training runs; the CPU time its thread uses per
   sample (reading CPU, memory, disk, network, the run-status check, one `log_batch`) is what it takes
   from training.
3. Prints the overhead at the default interval (`tracking.system_metrics_interval_s: 10`) as a share
   of step time, and, as a cross-check, steps timed with the sampler running every second (10x
   the default rate; on a busy machine that comparison is within noise).
The budget (issue 17) is under 1% of step time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from oner_lab import system_metrics, tracking, tracking_ui
from oner_lab.distributed import DistInfo
from oner_lab.spec import expand, load_spec, parse_only
from oner_lab.train import Trainer

DEFAULT_INTERVAL_S = tracking_ui.JobOptions().system_metrics_interval_s


def step_times(trainer: Trainer, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="experiments/ablation.yaml")
    parser.add_argument("--variant", default="oner")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing")
    parser.add_argument(
        "--train-size", type=int, default=2048, help="images generated (a step's cost does not depend on it)"
    )
    parser.add_argument("--cache-dir", default=None, help="data cache; default: a temporary folder")
    args = parser.parse_args()

    [planned] = expand(load_spec(args.spec), parse_only(f"variant={args.variant},seed=0"))
    with tempfile.TemporaryDirectory() as directory:
        data = {"cache_dir": args.cache_dir or f"{directory}/cache", "train_size": args.train_size}
        config = planned.config.model_copy(update={"data": planned.config.data.model_copy(update=data)})
        print(
            f"{args.spec} {planned.run_name}: preset {config.model.preset}, batch {config.train.batch_size}; preparing data ..."
        )
        trainer = Trainer(config, Path(directory) / "run", DistInfo(rank=0, world_size=1, local_rank=0))
        step_times(trainer, args.warmup)
        plain = step_times(trainer, args.steps)
        step_s = statistics.median(plain)
        print(f"training step: {step_s * 1e3:.1f} ms median over {args.steps} steps")

        uri = f"sqlite:///{Path(directory) / 'mlflow.db'}"
        client = tracking.connect(uri)
        run_id = client.create_run(tracking.experiment_id(client, "system-metrics-overhead")).info.run_id
        tracking.set_status(client, run_id, tracking.RUNNING)
        options = tracking_ui.JobOptions(system_metrics_interval_s=1.0)
        with system_metrics.node_metrics(uri, run_id, options) as monitor:
            assert monitor is not None
            sampled = step_times(trainer, args.steps)
            while monitor.samples < args.samples:
                time.sleep(0.2)
        per_sample = monitor.cpu_s / monitor.samples
        logged = len(client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
        print(
            f"sampler: {per_sample * 1e3:.1f} ms CPU per sample, its whole thread included ({monitor.samples} samples, "
            f"{logged} logged points, {len(client.get_run(run_id).data.metrics)} metrics; wall time in sampling and "
            f"writing {monitor.spent_s / monitor.samples * 1e3:.1f} ms, GIL and CPU waits included)"
        )
        share = per_sample / DEFAULT_INTERVAL_S
        print(
            f"overhead at the default interval ({DEFAULT_INTERVAL_S:g} s): {100 * share:.3f}% of training time "
            f"= {share * step_s * 1e3:.3f} ms per {step_s * 1e3:.0f} ms step"
        )
        with_monitor = statistics.median(sampled)
        print(
            f"cross-check, sampling every 1 s: {with_monitor * 1e3:.1f} ms median step vs {step_s * 1e3:.1f} ms "
            f"({100 * (with_monitor / step_s - 1):+.1f}%, noise included)"
        )
        print("budget: < 1% of step time")


if __name__ == "__main__":
    main()
