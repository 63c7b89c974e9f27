"""Runs logged under hashing scheme 1 are found again after `python -m oner_lab.migrate`.

The old runs are made by the real tracking code (`tracking.create_run`, `set_tags`, `end_run`)
in a real SQLite store, with the scheme-1 hash and without the scheme tag, exactly as the lab
logged them before the identity split.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow_store import copy_store

from oner_lab import migrate, run, tracking
from oner_lab.spec import PlannedRun, expand, load_spec
from oner_lab.spec.identity import SCHEME
from oner_lab.spec.legacy import from_params, v1_hash

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"
CHILD = "grid.variants.ft={objective: {variant: itc}, train: {init_from: oner, lr: 0.0005}}"


def _v1(planned: PlannedRun) -> str:
    parent = _v1(planned.parent) if planned.parent else None
    return v1_hash(planned.config.model_dump(mode="json"), parent)


def _log_old_run(client: MlflowClient, spec, planned: PlannedRun, status: str, parent_id: str | None = None) -> str:
    """One run as the scheme-1 lab logged it: its v1 hash, no scheme tag, the run dir named by that hash."""
    old = PlannedRun(planned.variant, planned.seed, planned.axes, planned.config, _v1(planned), planned.parent)
    run_id = tracking.create_run(client, spec.experiment_name, old, spec, spec.run_dir(old.config_hash).resolve())
    client.delete_tag(run_id, tracking.TAG_HASH_SCHEME)  # the one tag scheme 1 did not write
    if parent_id is not None:
        tracking.set_tags(
            client, run_id, {tracking.TAG_PARENT_RUN: parent_id, tracking.TAG_PARENT: planned.parent.run_name}
        )
    tracking.end_run(client, run_id, status)
    return run_id


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, str]:
    """Run name -> action, as `python -m oner_lab.run ... --dry-run` prints its plan."""
    assert run.main([str(SMOKE), "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    return dict(re.findall(r"│ (\w+/seed\d+)\s+│ [0-9a-f]{12} │ (\w+)\s+│", out))


def _said(capsys: pytest.CaptureFixture[str]) -> str:
    """What the CLI printed, its lines joined (rich wraps long lines at the console width)."""
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture
def old_store(
    tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], dict[str, str]]:
    """A store of scheme-1 runs of the smoke spec plus a fine-tuning child: `--set` args and run name -> id.

    itc was launched with `train.device: cpu` (scheme 1 hashed it, so its old hash differs from the
    plain spec's); oner FINISHED, ft (starting from oner) FAILED."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    uri = copy_store(mlflow_template, tmp_path)
    args = ["--set", f"tracking.uri={uri}", "--set", CHILD]
    spec = load_spec(SMOKE, overrides=args[1::2])
    on_cpu = {
        planned.variant: planned
        for planned in expand(load_spec(SMOKE, overrides=[*args[1::2], "base.train.device=cpu"]))
    }
    planned = {item.variant: item for item in expand(spec)}
    client = tracking.connect(uri)
    ids = {"itc/seed0": _log_old_run(client, spec, on_cpu["itc"], tracking.FINISHED)}
    ids["oner/seed0"] = _log_old_run(client, spec, planned["oner"], tracking.FINISHED)
    ids["ft/seed0"] = _log_old_run(client, spec, planned["ft"], tracking.FAILED, parent_id=ids["oner/seed0"])
    return args, ids


def test_migrate_retags_old_runs_and_the_planner_then_skips_the_finished(
    old_store: tuple[list[str], dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    args, ids = old_store
    assert _plan(capsys, *args) == {"itc/seed0": "run", "oner/seed0": "run", "ft/seed0": "run"}
    assert run.main([str(SMOKE), "--dry-run", *args]) == 0
    said = _said(capsys)
    assert "3 runs of experiment 'oner-smoke' were hashed by an earlier version" in said, said[-400:]

    assert migrate.main([str(SMOKE), *args, "--dry-run"]) == 0
    assert "3 runs would be re-tagged" in _said(capsys)
    assert _plan(capsys, *args)["oner/seed0"] == "run"  # a dry run writes nothing

    assert migrate.main([str(SMOKE), *args]) == 0
    assert "3 runs re-tagged to hashing scheme 2, 0 already were, 0 left alone" in _said(capsys)
    assert _plan(capsys, *args) == {"itc/seed0": "skip", "oner/seed0": "skip", "ft/seed0": "resume"}
    capsys.readouterr()
    assert run.main([str(SMOKE), "--dry-run", *args]) == 0
    assert "earlier version" not in _said(capsys)

    client = tracking.connect(args[1].partition("=")[2])
    before = {name: client.get_run(run_id).data.tags for name, run_id in ids.items()}
    planned = {item.run_name: item for item in expand(load_spec(SMOKE, overrides=args[1::2]))}
    for name, tags in before.items():
        assert tags[tracking.TAG_HASH] == planned[name].config_hash and tags[tracking.TAG_HASH_SCHEME] == str(SCHEME)
        assert tags[tracking.TAG_RUN_DIR].endswith(tags[tracking.TAG_HASH_V1])  # the directory keeps its old name
    assert migrate.main([str(SMOKE), *args]) == 0  # idempotent
    assert "0 runs re-tagged to hashing scheme 2, 3 already were" in _said(capsys)
    assert {name: client.get_run(run_id).data.tags for name, run_id in ids.items()} == before


def test_a_run_whose_logged_config_does_not_reproduce_its_hash_is_left_alone(
    old_store: tuple[list[str], dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    args, ids = old_store
    client = tracking.connect(args[1].partition("=")[2])
    client.set_tag(ids["oner/seed0"], tracking.TAG_HASH, "0123456789ab")  # not the hash of what it logged
    assert migrate.main([str(SMOKE), *args]) == 1
    out = _said(capsys)
    assert "does not reproduce its hash" in out and "its parent oner/seed0 was left alone" in out
    assert "1 runs re-tagged" in out and "2 left alone" in out
    assert client.get_run(ids["oner/seed0"]).data.tags[tracking.TAG_HASH] == "0123456789ab"
    assert _plan(capsys, *args) == {"itc/seed0": "skip", "oner/seed0": "run", "ft/seed0": "run"}


@pytest.mark.parametrize("profile", [None, "paper"])
def test_params_rebuild_the_logged_config_exactly(profile: str | None) -> None:
    """The fallback for a run without config.yaml: dotted params back to the config scheme 1 hashed."""
    for planned in expand(load_spec(ROOT / "experiments" / "ablation.yaml", profile=profile)):
        dumped = planned.config.model_dump(mode="json")
        assert from_params(tracking.flatten(dumped)) == dumped
