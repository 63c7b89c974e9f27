"""Where the wall time of `python -m oner_lab.run experiments/ablation.yaml` goes.

    python benchmarks/ablation_time.py                                   # the README's first command
    python benchmarks/ablation_time.py --set grid.seed=[0]               # one seed
    python benchmarks/ablation_time.py --set launcher.local.max_parallel=1 --set grid.seed=[0]   # as before
    python benchmarks/ablation_time.py --code /tmp/old    # another checkout's first command (git worktree)

Runs the CLI in a fresh working directory (its own MLflow store, run directories and, unless
`--data-cache` names one, its own data cache: a fresh clone generates the built-in data), samples
the CLI's own CPU time while it waits, then reads every run's `time/<phase>_s` metrics back from
MLflow (oner_lab/phases.py) and prints the breakdown: start-up and imports, data and tokenizer,
model building, training steps, evaluation, checkpoints, tracking, embeddings, and the CLI itself.
Machines differ by 2x and more, and a shared VM drifts: compare settings side by side, same hour.
`--code` times an older checkout's own first command with this environment (its directory first on
PYTHONPATH, for the CLI and every job it starts); a checkout older than the phase metrics gives the
wall time and the CLI's CPU only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from mlflow import MlflowClient
from rich.console import Console
from rich.table import Table

from oner_lab.phases import PHASES

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    spec: Path, overrides: list[str], workdir: Path, data_cache: Path | None, code: Path | None = None
) -> tuple[float, float, int]:
    """Wall seconds, the CLI's own CPU seconds (its children excluded) and its exit code."""
    command = [sys.executable, "-m", "oner_lab.run", str(spec), *(arg for o in overrides for arg in ("--set", o))]
    if data_cache is not None:
        command += ["--set", f"base.data.cache_dir={data_cache}"]
    log = (workdir / "cli.log").open("w")
    started = time.perf_counter()
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(code), env.get("PYTHONPATH"))))
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
    watched = psutil.Process(process.pid)
    cpu = 0.0
    while process.poll() is None:
        try:
            times = watched.cpu_times()
            cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    return time.perf_counter() - started, cpu, process.wait()


def phase_rows(workdir: Path) -> list[tuple[str, dict[str, float]]]:
    """(run name, metrics) of every run in the working directory's store."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            runs.append((run.info.run_name, {**run.data.metrics, "_end": run.info.end_time / 1000}))
    return sorted(runs)


def report(console: Console, wall: float, cli_cpu: float, started: float, runs: list[tuple[str, dict]]) -> None:
    table = Table(title=f"{len(runs)} runs: seconds per phase")
    for header in ("run", *PHASES, "session"):
        table.add_column(header, justify="right")
    totals = dict.fromkeys((*PHASES, "session"), 0.0)
    first_start = min(
        (m["_end"] - m.get("time/session_s", 0) - m.get("time/startup_s", 0) for _, m in runs), default=started
    )
    for name, metrics in runs:
        values = [metrics.get(f"time/{phase}_s", 0.0) for phase in PHASES]
        session = metrics.get("time/session_s", 0.0) + metrics.get("time/startup_s", 0.0)
        for phase, value in zip(PHASES, values):
            totals[phase] += value
        totals["session"] += session
        table.add_row(name, *(f"{value:.1f}" for value in values), f"{session:.1f}")
    table.add_section()
    table.add_row("total", *(f"{totals[key]:.0f}" for key in (*PHASES, "session")))
    console.print(table)
    console.print(
        f"wall {wall:.0f} s ({wall / 60:.1f} min); runs busy {totals['session']:.0f} s in all, "
        f"{totals['session'] / wall:.2f} at a time on average"
    )
    console.print(f"before the first run trained (spec, data generation, plan): {first_start - started:.0f} s")
    console.print(f"the CLI itself: {cli_cpu:.1f} CPU s ({100 * cli_cpu / wall:.1f}% of one core while it waited)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, help="another checkout to time (default: this one)")
    parser.add_argument("--spec", type=Path, help="default: experiments/ablation.yaml of the timed checkout")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="as the CLI's --set")
    parser.add_argument("--data-cache", type=Path, help="share a data cache (default: a fresh one, as a fresh clone)")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args()
    code = args.code.resolve() if args.code else None
    spec = (args.spec or (code or ROOT) / "experiments" / "ablation.yaml").resolve()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ablation_time_"))
    workdir.mkdir(parents=True, exist_ok=True)
    console = Console()
    console.print(f"{spec} {' '.join(args.overrides)} in {workdir} on {os.cpu_count()} CPUs")
    started = time.time()
    wall, cli_cpu, code = run_cli(spec, args.overrides, workdir, args.data_cache, code)
    if code != 0:
        console.print(f"the CLI exited with {code}; its output: {workdir / 'cli.log'}")
        raise SystemExit(code)
    report(console, wall, cli_cpu, started, phase_rows(workdir))


if __name__ == "__main__":
    main()
