"""The cost estimate (launch/estimate.py): a real CPU run takes the time it predicts, and a dry run of
a paper recipe prints GPU-hours from the counted FLOPs and the device table."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_in_process import oner_run

from oner_lab import cost, train
from oner_lab.launch import LaunchError, estimate
from oner_lab.launch.cluster import load_profile
from oner_lab.launch.devices import DEVICES
from oner_lab.spec import expand, load_spec, parse_only

ROOT = Path(__file__).resolve().parents[1]


def estimate_and_run(folder: Path) -> tuple[float, float, list[float]]:
    """(estimated, measured) seconds per step of the ablation's recipe (oner, tiny preset, batch 128) for 50
    steps, the estimate made before the run from counted FLOPs, this CPU's matmul rate and the table."""
    overrides = ["base.train.steps=50", "base.train.log_every=10", "base.eval.every_steps=null"]
    spec = load_spec(ROOT / "experiments" / "ablation.yaml", overrides=overrides)
    (run,) = expand(spec, parse_only("variant=oner,seed=0"))
    guess = estimate.estimate(run, "cpu")
    assert guess.flops_per_step == cost.count(run.config).flops_per_step
    times = estimate.StepTimes()
    train.run(run.config, folder, times)
    # the fastest window: this machine at full speed, as the estimate's matmul rate is its best round
    return guess.step_s, run.config.train.batch_size / max(times.samples_per_s), times.samples_per_s


def busy_share(seconds: float = 1.0) -> float:
    """Share of all CPUs' time spent busy over the next `seconds` (/proc/stat: idle and iowait are not busy)."""

    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total, idle = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    return 1 - (idle_after - idle) / max(1, total_after - total)


def wait_for_a_quiet_machine(limit_s: float = 90, quiet: float = 0.15) -> str:
    """Waits (at most `limit_s`) until the CPUs are busy less than `quiet` of the time, as a timing needs:
    a process of an earlier test still ending, or a daemon's burst, takes a core from both the matmul
    rate and the step time, not alike. Returns what it saw, for the failure message."""
    started = time.monotonic()
    while (busy := busy_share()) >= quiet and time.monotonic() - started < limit_s:
        pass
    return f"busy {busy:.0%} after {time.monotonic() - started:.0f} s of waiting"


def busiest_processes(count: int = 5) -> str:
    done = subprocess.run(["ps", "-eo", "pcpu,pid,args", "--sort=-pcpu"], capture_output=True, text=True)
    return "; ".join(line.strip()[:120] for line in done.stdout.splitlines()[1 : count + 1])


def test_a_cpu_run_takes_the_step_time_its_estimate_says_within_25_percent(tmp_path: Path) -> None:
    """One more attempt when the first misses: on this shared virtual machine both the matmul rate and the
    training speed drift by up to 1.6x between minutes, not together (docs/cost.md); a second miss fails.
    Each attempt starts once the machine is quiet."""
    attempts = []
    for attempt in range(2):
        machine = wait_for_a_quiet_machine()
        estimated, measured, windows = estimate_and_run(tmp_path / f"run{attempt}")
        attempts.append(
            f"estimated {estimated:.3f} s, measured {measured:.3f} s ({[round(x) for x in windows]} samples/s; "
            f"before it, {machine}; processes by lifetime CPU share: {busiest_processes()})"
        )
        if estimated == pytest.approx(measured, rel=0.25):
            return
    pytest.fail("the estimate missed by more than 25% twice: " + "; ".join(attempts))


def dry_run(
    spec: Path, *arguments: str, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> subprocess.CompletedProcess[str]:
    return oner_run([str(spec), "--dry-run", *arguments], cwd, monkeypatch)


def test_a_dry_run_of_the_4m_recipe_prints_a100_hours_from_the_counted_flops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = dry_run(ROOT / "experiments" / "retrieval_4m.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.returncode == 0, result.stderr
    spec = load_spec(ROOT / "experiments" / "retrieval_4m.yaml")
    a100 = DEVICES["a100-80gb"]
    assert "Estimated training cost on 32 x a100-80gb" in result.stdout
    lines = result.stdout.split("Estimated training cost", 1)[1].splitlines()
    total_hours = 0.0
    for run in expand(spec):
        hours = cost.count(run.config).flops_per_step * run.config.train.steps / (a100.peak_flops * a100.mfu) / 3600
        total_hours += hours
        (row,) = [line for line in lines if line.startswith(f"│ {run.run_name} ")]
        assert row.split("│")[-3].strip() == (f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}")
    (total,) = [line for line in lines if "total (2 runs)" in line]
    assert total.split("│")[-3].strip() == f"{total_hours:,.0f}"
    assert "13% model-FLOPs utilisation, assumed" in result.stdout


def test_a_cpu_dry_run_estimates_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = dry_run(ROOT / "experiments" / "smoke.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.returncode == 0, result.stderr
    assert "Estimated training cost on this machine's CPU" in result.stdout
    assert "measured for training steps" in result.stdout
    assert "Estimating the training cost of 2 runs" in result.stderr  # why a log waits before the table


def test_estimating_says_what_it_is_doing_before_each_slow_part() -> None:
    """The CLI shows these lines on a terminal while it waits (run.report_cost): the 4 s matmul measurement
    once per thread setting, then each run's FLOP count, in the order of the table."""
    runs = expand(load_spec(ROOT / "experiments" / "smoke.yaml"))
    heard: list[str] = []
    estimates = estimate.estimate_all(runs, "cpu", progress=heard.append)
    assert [one.run_name for one in estimates] == [run.run_name for run in runs]
    assert heard[0].startswith("Measuring this CPU's float32 matmul rate")
    counting = [
        f"Counting training FLOPs per step on meta tensors: {run.run_name} ({number}/{len(runs)})"
        for number, run in enumerate(runs, 1)
    ]
    assert heard[1:] == counting, heard
    heard.clear()
    estimate.estimate_all(runs, "a100-80gb", 8, progress=heard.append)  # a card's peak is a datasheet figure
    assert heard == counting


def write_profile(folder: Path, **changes: object) -> Path:
    text = (ROOT / "slurm" / "a100.yaml").read_text()
    for key, value in changes.items():
        text = "\n".join(f"{key}: {value}" if line.startswith(f"{key}:") else line for line in text.splitlines())
    path = folder / "site.yaml"
    path.write_text(text + "\n")
    return path


def test_a_profile_naming_an_unknown_card_is_refused_naming_the_file_and_the_cards(tmp_path: Path) -> None:
    path = write_profile(tmp_path, gpu="a100-96gb")
    with pytest.raises(LaunchError) as refused:
        load_profile(str(path))
    assert str(path) in str(refused.value) and "gpu" in str(refused.value)
    assert "'a100-96gb' is not in the cost table" in str(refused.value) and "a100-80gb" in str(refused.value)


def test_a_gpu_profile_without_a_card_gets_a_note_instead_of_an_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_profile(tmp_path, gpu="null")
    result = dry_run(
        ROOT / "experiments" / "retrieval_4m.yaml",
        "--set",
        f"launcher.slurm.cluster={path}",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert result.returncode == 0, result.stderr
    assert "No cost estimate: the cluster profile names no `gpu`" in result.stdout
    assert "Estimated training cost" not in result.stdout


MEASURE_STEP = """
import json, resource, sys
from pathlib import Path
from oner_lab.distributed import DistInfo
from oner_lab.spec.config import RunConfig
from oner_lab.train import Trainer

config = RunConfig.model_validate_json(sys.argv[1])
trainer = Trainer(config, Path(sys.argv[2]), DistInfo(0, 1, 0))
trainer.start()
trainer.model.pack_tokens = trainer.target.pack_tokens = False  # every position, as a GPU rank runs them
def status(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024
Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident size (VmHWM) to the current one
before = status("VmRSS")
trainer.train_step()
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


@pytest.mark.parametrize("variant", ["itc", "oner_cumulative"])
def test_the_memory_estimate_of_a_step_is_what_a_real_cpu_step_adds_within_25_percent(
    tmp_path: Path, variant: str
) -> None:
    """One real training step in a fresh process at batch 384: its resident memory grows by the step's
    live tensors and AdamW's new moments, which the estimate (counted on meta tensors) predicts. The
    step runs every text position, as the GPU rank the estimate is for does: a CPU pass otherwise skips
    the padding (model/packing.py) and needs less."""
    spec = load_spec(ROOT / "experiments" / "ablation.yaml", overrides=["base.train.batch_size=384"])
    (run,) = expand(spec, parse_only(f"variant={variant},seed=0"))
    config = run.config.model_copy(
        update={"data": run.config.data.model_copy(update={"train_size": 512, "cache_dir": str(tmp_path / "cache")})}
    )
    memory = estimate.rank_memory(cost.count(config), world_size=1, bf16=False)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_STEP, config.model_dump_json(), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    measured = figures["peak"] - figures["before"]
    predicted = memory.activations + memory.optimizer
    assert predicted == pytest.approx(measured, rel=0.25), (
        f"estimated {predicted / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB"
    )


def test_a_paper_profile_that_does_not_fit_its_cards_is_refused_naming_what_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oner_cumulative at 512 samples per A100: recomputing the blocks is not enough, a bigger card neither;
    four nodes are (three do not divide the batch)."""
    arguments = ["--profile", "paper", "--set", "launcher.slurm.nodes=1", "--only", "variant=oner_cumulative"]
    result = dry_run(ROOT / "experiments" / "ablation.yaml", *arguments, cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.returncode == 2, result.stdout[-2000:]
    assert "runs oner_cumulative/seed0, oner_cumulative/seed1, oner_cumulative/seed2: needs about" in result.stderr
    assert "GiB per GPU" in result.stderr and "more than 90% of the 80 GB of one a100-80gb" in result.stderr
    assert "options that fit: launcher.slurm.nodes: 4 (docs/cost.md)" in result.stderr
    assert "(too big)" in result.stdout


@pytest.mark.parametrize(
    ("spec", "profile"),
    [("ablation.yaml", "paper"), ("transfer.yaml", None)],
)
def test_every_paper_profile_prints_a_memory_estimate_that_fits_its_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, profile: str | None
) -> None:
    result = dry_run(
        ROOT / "experiments" / spec, *(["--profile", profile] if profile else []), cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert result.returncode == 0, result.stderr
    assert "x a100-80gb" in result.stdout and "memory/rank" in result.stdout
    assert "GiB" in result.stdout and "(too big)" not in result.stdout
