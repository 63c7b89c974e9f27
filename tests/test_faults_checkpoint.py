"""Faults injected into checkpoints and files (docs/reliability.md, "Checkpoints and files"):
crafted pickles, truncated and garbage checkpoints, a full disk, SIGKILL around a checkpoint,
non-finite states and loss spikes, unexpanded paths, writable runs directories."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow_store import copy_store
from small_disk import tmpfs
from test_train import ListLogger, StopAt, final_params, micro_config

from oner_lab import checkpoint, train
from oner_lab.contract import ConfigError, Interrupted
from oner_lab.launch.cluster import LaunchError
from oner_lab.launch.permissions import check_runs_dir
from oner_lab.spec.config import RunConfig


class PlantsAFile:
    """What an attacker pickles: unpickling it creates `marker` (it could as well run a shell)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --- 1. checkpoints never run code ------------------------------------------------------------


def test_crafted_checkpoint_is_refused_on_resume_and_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted = tmp_path / "run" / "checkpoints" / "last.pt"
    crafted.parent.mkdir(parents=True)
    torch.save({"step": 3, "model": PlantsAFile(marker)}, crafted)
    with pytest.raises(checkpoint.CheckpointError) as error:
        train.run(micro_config(tmp_path / "cache"), tmp_path / "run")
    assert not marker.exists(), "loading the checkpoint ran the pickled code"
    assert str(crafted) in str(error.value) and "could run code" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt.1").exists()  # not restarted from step 0 over it


def test_crafted_init_from_checkpoint_is_refused_naming_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted = tmp_path / "parent.pt"
    torch.save({"model": PlantsAFile(marker), "tower": {}}, crafted)
    with pytest.raises(ConfigError) as error:
        train.run(micro_config(tmp_path / "cache", init_from=str(crafted)), tmp_path / "run")
    assert not marker.exists()
    assert error.value.key == "train.init_from" and str(crafted) in str(error.value)


def test_checkpoints_hold_only_tensors_and_plain_containers(tmp_path: Path) -> None:
    with pytest.raises(Interrupted):
        train.run(micro_config(tmp_path / "cache"), tmp_path / "run", control=StopAt(2, []))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)  # no allow-list needed
    assert state["step"] == 2 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_runs_dir_writable_by_others_is_refused_naming_the_fix(tmp_path: Path, mode: int) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(mode)
    with pytest.raises(LaunchError) as error:
        check_runs_dir(runs)
    assert str(runs) in str(error.value) and f"chmod go-w {runs}" in str(error.value)
    runs.chmod(0o755)
    (runs / "submitit").mkdir(mode=0o777)
    (runs / "submitit").chmod(0o777)
    with pytest.raises(LaunchError, match=f"chmod go-w {runs / 'submitit'}"):
        check_runs_dir(runs)


def test_runs_dir_created_under_a_group_umask_is_private(tmp_path: Path) -> None:
    previous = os.umask(0o002)
    try:
        check_runs_dir(tmp_path / "a" / "runs")
    finally:
        os.umask(previous)
    for folder in (tmp_path / "a", tmp_path / "a" / "runs", tmp_path / "a" / "runs" / "submitit"):
        assert not folder.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH), folder


def test_cli_refuses_a_shared_runs_dir_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from oner_lab.run import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs").chmod(0o777)
    smoke = Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml"
    assert main([str(smoke), "--set", "launcher.backend=debug"]) == 2
    error = capsys.readouterr().err
    assert f"chmod go-w {tmp_path / 'runs'}" in error
    assert not (tmp_path / "mlflow.db").exists()


# --- 2. a corrupt newest checkpoint falls back to an older one --------------------------------


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data cache, run dir) of a micro run stopped at step 4: last.pt is step 4, last.pt.1 step 2."""
    root = tmp_path_factory.mktemp("stopped")
    config = micro_config(root / "cache", checkpoint_every=2)
    with pytest.raises(Interrupted):
        train.run(config, root / "run", control=StopAt(4, []))
    return root / "cache", root / "run"


@pytest.fixture(scope="module")
def straight_params(
    stopped_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, torch.Tensor]:
    cache, _ = stopped_run
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train.run(micro_config(cache, checkpoint_every=2), run_dir)
    return final_params(run_dir)


def _copy(stopped_run: tuple[Path, Path], tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run[1], run_dir)
    return run_dir


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize("corrupt", [_truncate, _garbage], ids=["truncated", "garbage"])
def test_corrupt_newest_checkpoint_resumes_from_the_older_one(
    stopped_run: tuple[Path, Path],
    straight_params: dict[str, torch.Tensor],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    corrupt,
) -> None:
    cache, _ = stopped_run
    run_dir = _copy(stopped_run, tmp_path)
    newest = run_dir / "checkpoints" / "last.pt"
    assert checkpoint.load(newest)["step"] == 4 and checkpoint.load(newest.with_name("last.pt.1"))["step"] == 2
    corrupt(newest)
    logger = ListLogger()
    with caplog.at_level(logging.WARNING, logger="oner_lab.checkpoint"):
        train.run(micro_config(cache, checkpoint_every=2), run_dir, logger)
    assert logger.metrics[0][0] == 3  # resumed after step 2, not from step 0
    assert f"skipping checkpoint {newest}" in caplog.text
    resumed = final_params(run_dir)
    for key, value in straight_params.items():
        assert torch.equal(value, resumed[key]), key  # the older checkpoint resumes bit-exactly too


def test_no_loadable_checkpoint_fails_naming_every_file(stopped_run: tuple[Path, Path], tmp_path: Path) -> None:
    cache, _ = stopped_run
    run_dir = _copy(stopped_run, tmp_path)
    files = checkpoint.history(run_dir / "checkpoints" / "last.pt")
    assert len(files) == 2
    _truncate(files[0])
    _garbage(files[1])
    with pytest.raises(checkpoint.CheckpointError) as error:
        train.run(micro_config(cache, checkpoint_every=2), run_dir)
    for path in files:
        assert str(path) in str(error.value)
    assert checkpoint.history(run_dir / "checkpoints" / "last.pt") == files  # nothing written from step 0


def test_only_the_newest_k_checkpoints_stay(tmp_path: Path) -> None:
    train.run(micro_config(tmp_path / "cache", checkpoint_every=1, keep_checkpoints=3), tmp_path / "run")
    files = checkpoint.history(tmp_path / "run" / "checkpoints" / "last.pt")
    assert [checkpoint.load(path)["step"] for path in files] == [6, 5, 4]


# --- 7. only finite states are checkpointed; the loss-spike guard --------------------------------


def test_lr_1e12_stops_naming_step_and_term_and_leaves_no_bad_checkpoint(tmp_path: Path) -> None:
    # lr warms up towards 1e12 by 100 per step: a few steps in, the weights give a non-finite loss
    config = micro_config(
        tmp_path / "cache", lr=1e12, min_lr=0.0, warmup_steps=10**10, grad_clip=None, checkpoint_every=1, steps=20
    )
    with pytest.raises(train.NonFiniteLossError) as error:
        train.run(config, tmp_path / "run")
    message = str(error.value)
    moved = tmp_path / "run" / "checkpoints" / "last.pt.nonfinite"
    bad_step = checkpoint.read(moved)["step"]
    assert f"non-finite loss at step {bad_step} in term(s)" in message and str(moved) in message
    good = checkpoint.load_newest(tmp_path / "run" / "checkpoints" / "last.pt")
    assert good is not None and good[0]["step"] == bad_step - 1 and str(good[1]) in message
    assert all(torch.isfinite(v).all() for v in good[0]["model"].values())


def test_non_finite_parameters_are_never_saved(stopped_run: tuple[Path, Path], tmp_path: Path) -> None:
    # a NaN in the weights (a bad kernel, a bit flip) must not overwrite the last good checkpoint
    from oner_lab.distributed import init_from_env

    cache, _ = stopped_run
    run_dir = _copy(stopped_run, tmp_path)
    trainer = train.Trainer(micro_config(cache, checkpoint_every=2), run_dir, init_from_env("cpu"))
    trainer.start()
    assert trainer.step == 4
    name, param = next(iter(trainer.model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    trainer.step = 5
    with pytest.raises(train.NonFiniteLossError, match=rf"non-finite state at step 5 in model\.{name}") as error:
        trainer.save()
    newest = run_dir / "checkpoints" / "last.pt"
    assert f"the last good checkpoint is kept at {newest}" in str(error.value)
    assert checkpoint.load(newest)["step"] == 4


def test_loss_spike_guard_stops_naming_step_and_term(tmp_path: Path) -> None:
    # lr warms up to a value that makes the loss jump; the guard stops before a spiked state is saved
    config = micro_config(
        tmp_path / "cache", lr=50.0, min_lr=0.0, warmup_steps=40, steps=40, checkpoint_every=1, loss_spike_factor=1.5
    )
    with pytest.raises(train.LossSpikeError) as error:
        train.run(config, tmp_path / "run")
    message = str(error.value)
    assert "loss spike at step" in message and "train.loss_spike_factor" in message and "term(s)" in message
    step = int(message.split("loss spike at step ")[1].split(":")[0])
    newest = checkpoint.load_newest(tmp_path / "run" / "checkpoints" / "last.pt")
    assert newest is not None and newest[0]["step"] <= step
    assert micro_config(tmp_path / "cache").train.loss_spike_factor is None  # off by default


# --- 3. temporary files and a full disk ------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_files_of_dead_writers_are_swept_at_start_and_live_ones_kept(
    stopped_run: tuple[Path, Path], tmp_path: Path
) -> None:
    cache, _ = stopped_run
    run_dir = _copy(stopped_run, tmp_path)
    folder = run_dir / "checkpoints"
    dead = checkpoint.tmp_path(folder / "last.pt", _dead_pid())
    dead.write_bytes(b"half a checkpoint")
    live = checkpoint.tmp_path(folder / "last.pt", os.getppid())  # a live writer (our parent): left alone
    live.write_bytes(b"being written")
    train.run(micro_config(cache, checkpoint_every=2), run_dir)
    assert not dead.exists() and live.exists()
    assert [path.name for path in folder.iterdir() if ".tmp-" in path.name] == [live.name]


def test_disk_full_fails_the_run_with_one_line_naming_path_and_size_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mlflow_template: Path
) -> None:
    from mlflow import MlflowClient

    from oner_lab.run import main
    from oner_lab.spec import expand, load_spec

    monkeypatch.chdir(tmp_path)
    copy_store(mlflow_template, tmp_path)
    smoke = Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml"
    sets = ["launcher.backend=debug", f"base.data.cache_dir={tmp_path / 'cache'}"]
    planned = expand(load_spec(smoke, overrides=sets))
    itc = next(run for run in planned if run.variant == "itc")
    args = [str(smoke), "--only", "variant=itc", *[part for item in sets for part in ("--set", item)]]
    (tmp_path / "runs").mkdir(mode=0o755)
    with tmpfs(tmp_path / "runs" / itc.config_hash, "160k") as run_dir:  # the run directory: too small for a checkpoint
        assert main(args) == 1
        out = capsys.readouterr().out
        assert [path for path in run_dir.rglob("*") if ".tmp-" in path.name] == []
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("oner-smoke").experiment_id])[0]
    assert run.info.status == "FAILED"
    reason = run.data.tags["oner.error"].splitlines()[0]
    assert reason.startswith(f"CheckpointWriteError: disk full writing checkpoint {run_dir / 'checkpoints'}")
    assert "it needs about" in reason and "is free there" in reason
    assert f"itc/seed0 FAILED: {reason}" in " ".join(out.split())  # the CLI's line: the same one reason


# --- 4. no metric gaps: a kill around a checkpoint loses no step --------------------------------

KILLED_TRAINER = """
import os, signal, sys
from pathlib import Path
from mlflow import MlflowClient
sys.path.insert(0, {tests!r})
from test_train import micro_config
from oner_lab import train, tracking

uri, run_id, run_dir, cache, kill_at, when = sys.argv[1:7]
kill_at = int(kill_at)

class DiesInFlush(tracking.MlflowRunLogger):
    # the store (or the node) dies while metrics are flushed: SIGKILL before or after the write
    calls = 0
    def flush(self):
        DiesInFlush.calls += 1
        if DiesInFlush.calls == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        super().flush()
        if DiesInFlush.calls == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

config = micro_config(Path(cache), steps=12, checkpoint_every=2)
with DiesInFlush(MlflowClient(uri), run_id, flush_every_s=3600) as logger:
    train.run(config, Path(run_dir), logger)
"""


@pytest.mark.slow
def test_sigkill_around_checkpoints_leaves_every_step_in_mlflow_exactly_once(
    stopped_run: tuple[Path, Path], tmp_path: Path, mlflow_template: Path
) -> None:
    from mlflow import MlflowClient
    from mlflow_store import subprocess_env

    cache, _ = stopped_run
    uri = copy_store(mlflow_template, tmp_path)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("faults")).info.run_id
    script = tmp_path / "trainer.py"
    script.write_text(KILLED_TRAINER.format(tests=str(Path(__file__).resolve().parent)))
    rng = random.Random()
    first = rng.randint(1, 5)  # the checkpoint at step 2 * first is never written: 7 - first are left to flush for
    kills = [(first, "before"), (rng.randint(1, 7 - first), "after"), (0, "never")]
    run_dir = tmp_path / "run"
    for kill_at, when in kills:
        done = subprocess.run(
            [sys.executable, str(script), uri, run_id, str(run_dir), str(cache), str(kill_at), when],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        expected = 0 if when == "never" else -signal.SIGKILL
        assert done.returncode == expected, (kill_at, when, done.stderr[-2000:])
    for key in ("train/loss", "train/lr", "train/loss_itc"):
        steps = [metric.step for metric in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, 13)), (key, sorted(steps), kills)


# --- 10. paths: environment variables and ~ ----------------------------------------------------


def test_environment_variables_and_home_are_expanded_in_every_path_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from oner_lab.spec import expand, load_spec

    monkeypatch.setenv("ONER_SCRATCH", "/scratch/alice")
    monkeypatch.setenv("HOME", "/home/alice")
    smoke = Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml"
    spec = load_spec(
        smoke,
        overrides=[
            "launcher.runs_dir=$ONER_SCRATCH/oner-runs",
            "tracking.uri=sqlite:///~/mlflow.db",
            "base.data.cache_dir=${ONER_SCRATCH}/cache",
            "base.data.tokenizer=~/tok",
            "base.train.init_from=$ONER_SCRATCH/parent.pt",
            "base.data.eval_sources={coco: {format: karpathy, path: $ONER_SCRATCH/coco.json, image_root: ~/coco}}",
        ],
    )
    assert spec.launcher.runs_dir == "/scratch/alice/oner-runs"
    assert spec.tracking.uri == "sqlite:////home/alice/mlflow.db"
    config = expand(spec)[0].config
    assert config.data.cache_dir == "/scratch/alice/cache" and config.data.tokenizer == "/home/alice/tok"
    assert config.train.init_from == "/scratch/alice/parent.pt"
    assert config.data.eval_sources["coco"].path == "/scratch/alice/coco.json"
    assert config.data.eval_sources["coco"].image_root == "/home/alice/coco"
    urls = RunConfig.model_validate(
        {"data": {"source": {"kind": "webdataset", "urls": ["$ONER_SCRATCH/a-{0..3}.tar", "~/b.tar"]}}}
    ).data.source.urls
    assert urls == ["/scratch/alice/a-{0..3}.tar", "/home/alice/b.tar"]


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("launcher.runs_dir=/scratch/$ONER_UNSET_VAR/runs", "launcher.runs_dir"),
        ("base.data.cache_dir=${ONER_UNSET_VAR}/cache", "data.cache_dir"),
    ],
)
def test_an_unset_variable_is_refused_naming_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], setting: str, key: str
) -> None:
    from oner_lab.run import main

    monkeypatch.delenv("ONER_UNSET_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    smoke = Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml"
    assert main([str(smoke), "--set", setting]) == 2
    error = capsys.readouterr().err
    assert key in error and "$ONER_UNSET_VAR is not set" in error
    assert list(tmp_path.iterdir()) == []  # no literal "$ONER_UNSET_VAR" folder, no store


# --- 11. memory at scale: uint8 eval sets, class folders decoded per batch, rank 0 only -----------


def _toy_encoders(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image_proj, token_table = torch.randn(3, 8, generator=g), torch.randn(512, 8, generator=g)

    def encode_image(images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1)[:, :3] @ image_proj

    def encode_text(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (token_table[ids % 512] * mask[..., None]).sum(1)

    return encode_image, encode_text


def test_uint8_eval_sets_give_the_metrics_of_float32_ones(stopped_run: tuple[Path, Path], tmp_path: Path) -> None:
    import dataclasses

    from oner_lab.data.batch import normalise
    from oner_lab.distributed import DistInfo
    from oner_lab.evaluate import evaluate

    cache, _ = stopped_run
    trainer = train.Trainer(micro_config(cache), tmp_path / "run", DistInfo(0, 1, 0))
    sets = trainer.data.eval_sets
    assert {name: data.images.dtype for name, data in sets.items()} == {
        "shapes": torch.uint8,
        "shapes_cls": torch.uint8,
    }
    as_float = {name: dataclasses.replace(data, images=normalise(data.images)) for name, data in sets.items()}
    for encoders in (_toy_encoders(), (trainer.model.encode_image, trainer.model.encode_text)):
        # the same pixels; only the last float32 digit of gap/alignment may differ (BLAS blocking of other buffers)
        assert evaluate(*encoders, sets, batch_size=5) == pytest.approx(
            evaluate(*encoders, as_float, batch_size=5), rel=1e-5, abs=1e-6
        )


def test_class_folder_set_is_decoded_per_batch_with_the_same_metrics(tmp_path: Path) -> None:
    import dataclasses

    from PIL import Image

    from oner_lab.data.eval_sources import FileImages, class_entries, read_classification
    from oner_lab.data.tokenizer import TextTokenizer
    from oner_lab.evaluate import evaluate

    rng = torch.Generator().manual_seed(0)
    for index in range(12):
        folder = tmp_path / "val" / f"class{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (20, 24, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{index}.png")
    tokenizer = TextTokenizer.train(["a photo of a class0", "class1 class2 thing"], 64)
    path = str(tmp_path / "val")
    lazy, skipped = read_classification("val", path, class_entries(path, None, None), tokenizer, 16, 12, "skip", 2)
    assert skipped == 0 and isinstance(lazy.images, FileImages) and lazy.images.shape == (12, 3, 16, 16)
    held = dataclasses.replace(lazy, images=lazy.images[0:12])
    assert held.images.dtype == torch.uint8 and torch.equal(lazy.images[3:5], held.images[3:5])
    encoders = _toy_encoders(1)
    assert evaluate(*encoders, {"val": lazy}, batch_size=5) == evaluate(*encoders, {"val": held}, batch_size=5)


def test_only_rank_0_prepares_and_evaluates_the_eval_sets(stopped_run: tuple[Path, Path], tmp_path: Path) -> None:
    from oner_lab.distributed import DistInfo

    cache, _ = stopped_run
    other = train.Trainer(micro_config(cache), tmp_path / "run", DistInfo(1, 2, 1))  # no process group: barriers pass
    assert other.data.eval_sets == {}
    assert not [key for key in other.evaluate() if key.startswith("eval/")]


def test_a_checkpoint_written_before_a_config_field_existed_still_resumes(
    stopped_run: tuple[Path, Path], tmp_path: Path
) -> None:
    # jobs running when the lab is upgraded: their checkpoints lack the fields added since (with defaults)
    cache, _ = stopped_run
    run_dir = _copy(stopped_run, tmp_path)
    for path in checkpoint.history(run_dir / "checkpoints" / "last.pt"):
        state = checkpoint.load(path)
        del state["config"]["train"]["keep_checkpoints"], state["config"]["train"]["loss_spike_factor"]
        torch.save(state, path)
    logger = ListLogger()
    train.run(micro_config(cache, checkpoint_every=2), run_dir, logger)
    assert logger.metrics[0][0] == 5  # resumed after step 4
