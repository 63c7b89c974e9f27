"""Run identity: which fields are hashed, hashes that survive upgrades, and the golden file.

`tests/golden_hashes.json` holds the hash of every run of every shipped spec and profile and
every identity field's baseline. When a change is meant to change them, regenerate it with

    python tests/golden_hashes.py --write

and say in the commit which hashes changed and why (finished runs under the old hashes are no
longer skipped unless `python -m oner_lab.migrate` re-tags them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import pytest
from cli_in_process import oner_run
from golden_hashes import GOLDEN, current
from pydantic import Field

from oner_lab.spec import RunConfig, expand, load_spec
from oner_lab.spec.config import ObjectiveConfig, TrainConfig
from oner_lab.spec.identity import Baseline, canonical_text, config_hash, field_roles, is_operational, roles_markdown

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"
OPERATIONAL_KEYS = {
    "data.workers",
    "data.cache_dir",
    "data.on_corrupt",
    "train.device",
    "train.checkpoint_every",
    "train.log_every",
    "train.threads",
    "eval.batch_size",
    "train.keep_checkpoints",
    "train.activation_checkpointing",
    "train.compile",
}


def test_golden_baselines_are_the_fields_baselines() -> None:
    """A default changed without a `Baseline(old)` marker on its field would silently give runs that
    rely on it the hash of runs trained under the old default: this names the field instead."""
    golden = json.loads(GOLDEN.read_text())
    now = current()
    assert now["scheme"] == golden["scheme"], "the hashing scheme changed: regenerate the golden file deliberately"
    for key, value in golden["baselines"].items():
        assert key in now["baselines"], f"identity field {key} is gone: say in upgrade() (spec/legacy.py) where it went"
        assert now["baselines"][key] == value, (
            f"{key}: its baseline changed from {value!r} to {now['baselines'][key]!r}; if its default changed on "
            f"purpose, keep `Baseline({value!r})` on the field so runs that wrote the old value keep their hashes"
        )
    added = set(now["baselines"]) - set(golden["baselines"])
    assert not added, (
        f"new identity fields {sorted(added)}: regenerate the golden file (python tests/golden_hashes.py --write)"
    )


def test_golden_hashes_of_every_shipped_spec_and_profile() -> None:
    golden = json.loads(GOLDEN.read_text())["runs"]
    now = current()["runs"]
    assert set(now) == set(golden), "a spec was added or removed: regenerate the golden file"
    for spec, profiles in golden.items():
        assert set(now[spec]) == set(profiles), f"{spec}: profiles changed: regenerate the golden file"
        for profile, hashes in profiles.items():
            changed = {
                name: (old, now[spec][profile].get(name))
                for name, old in hashes.items()
                if now[spec][profile].get(name) != old
            }
            assert not changed and now[spec][profile] == hashes, f"{spec} --profile {profile}: hashes changed {changed}"


def test_operational_fields_are_exactly_the_marked_ones_and_identity_the_rest() -> None:
    roles = {role.key: role for role in field_roles(RunConfig)}
    assert {key for key, role in roles.items() if not role.identity} == OPERATIONAL_KEYS
    assert all(role.why for role in roles.values() if not role.identity), "say on each operational field why"
    assert (
        roles["train.precision"].identity
        and roles["eval.every_steps"].identity
        and roles["data.shuffle_buffer"].identity
    )


def _dry_run_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *sets: str) -> dict[str, str]:
    """Run name -> config hash as the real CLI's `--dry-run` prints them."""
    arguments = [argument for item in sets for argument in ("--set", item)]
    done = oner_run([str(SMOKE), "--dry-run", *arguments], tmp_path, monkeypatch)
    assert done.returncode == 0, done.stdout + done.stderr
    hashes = dict(re.findall(r"│ (\w+/seed\d+)\s+│ ([0-9a-f]{12}) │", done.stdout))
    assert len(hashes) == 2, done.stdout
    return hashes


@pytest.mark.slow
def test_dry_run_hashes_ignore_operational_settings_and_follow_science_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _dry_run_hashes(tmp_path, monkeypatch)
    operational = _dry_run_hashes(
        tmp_path,
        monkeypatch,
        "base.train.device=cpu",
        "base.data.workers=2",
        "base.train.log_every=1",
        "base.train.checkpoint_every=3",
        "base.train.threads=1",
        "base.data.cache_dir=/elsewhere",
        "base.eval.batch_size=7",
        "base.data.on_corrupt=fail",
    )
    assert operational == plain
    # one science setting per variant; precision is science: bf16 vs fp32 changes the numbers learned
    science = _dry_run_hashes(
        tmp_path, monkeypatch, "grid.variants.itc.train.lr=0.002", "grid.variants.oner.train.precision=fp32"
    )
    assert science["itc/seed0"] != plain["itc/seed0"] and science["oner/seed0"] != plain["oner/seed0"]


class _NewObjective(ObjectiveConfig):
    """The objective section of a later release: one more option, whose default is the old behaviour."""

    label_smoothing: float = Field(default=0.0, ge=0)


class _LaterTrain(TrainConfig):
    """A later release that changed `min_lr`'s default on purpose, keeping the old one as its baseline."""

    min_lr: Annotated[float, Baseline(1e-5)] = Field(default=0.0, ge=0)


class _LaterRunConfig(RunConfig):
    objective: _NewObjective = Field(default_factory=_NewObjective)
    train: _LaterTrain = Field(default_factory=_LaterTrain)


@pytest.mark.parametrize("profile", [None, "paper"])
def test_a_field_added_with_its_old_behaviour_as_default_keeps_every_hash(profile: str | None) -> None:
    for run in expand(load_spec(ROOT / "experiments" / "ablation.yaml", profile=profile)):
        later = _LaterRunConfig.model_validate(run.config.model_dump(mode="json"))
        parent = run.parent.config_hash if run.parent else None
        assert config_hash(later, parent) == run.config_hash
        smoothed = later.model_copy(update={"objective": later.objective.model_copy(update={"label_smoothing": 0.1})})
        assert config_hash(smoothed, parent) != run.config_hash


def test_a_default_changed_on_purpose_changes_the_hash_of_runs_relying_on_it() -> None:
    run = expand(load_spec(SMOKE))[0]
    assert run.config.train.min_lr == 1e-5  # the smoke spec relies on the default
    dumped = run.config.model_dump(mode="json")
    del dumped["train"]["min_lr"]
    relying = _LaterRunConfig.model_validate(dumped)
    assert relying.train.min_lr == 0.0 and config_hash(relying) != run.config_hash
    wrote_old = relying.model_copy(update={"train": relying.train.model_copy(update={"min_lr": 1e-5})})
    assert config_hash(wrote_old) == run.config_hash


def test_canonical_text_names_its_scheme_and_folds_the_parent() -> None:
    run = expand(load_spec(SMOKE))[0]
    text = canonical_text(run.config, "abc123abc123")
    assert text.startswith("oner-config 2\n") and text.endswith("\nparent abc123abc123")
    assert "device" not in text and config_hash(run.config, "abc123abc123") != run.config_hash


def test_every_field_is_either_operational_or_hashed_when_it_differs_from_its_baseline() -> None:
    """Setting any identity leaf away from its baseline changes the hash; any operational one does not."""
    base = RunConfig()
    changes = {
        "model.drop_path": 0.1,
        "objective.mim_ratio": 0.5,
        "data.shuffle_buffer": 7,
        "data.workers": 9,
        "train.warmup_steps": 3,
        "train.device": "cpu",
        "eval.every_steps": 5,
        "eval.batch_size": 3,
    }
    for key, value in changes.items():
        section, name = key.split(".")
        changed = base.model_copy(update={section: getattr(base, section).model_copy(update={name: value})})
        field = type(getattr(base, section)).model_fields[name]
        assert (config_hash(changed) == config_hash(base)) == is_operational(field), key


def test_docs_list_the_identity_and_operational_fields_the_markers_say() -> None:
    """docs/spec.md's tables are the markers' (`python -m oner_lab.spec.identity` prints them to paste)."""
    docs = (ROOT / "docs" / "spec.md").read_text()
    shown = docs.split("<!-- identity-table:start -->\n")[1].split("<!-- identity-table:end -->")[0]
    assert shown == roles_markdown(RunConfig), (
        "docs/spec.md: paste `python -m oner_lab.spec.identity` between the markers"
    )
