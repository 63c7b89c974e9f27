"""The experiment spec: shipped specs, profiles, --set, grid expansion, config hash, and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from oner_lab.spec import RunConfig, Spec, SpecError, expand, load_spec, parse_only
from oner_lab.spec.schema import family_units, is_model, keys_of, unwrap

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
ABLATION = EXPERIMENTS / "ablation.yaml"
SMOKE = EXPERIMENTS / "smoke.yaml"
PAPER_VARIANTS = ["itc_two_heads", "itc", "xmc", "xmc_cic", "oner", "oner_cumulative"]

MINIMAL = """\
name: demo
base:
  train: {steps: 5, lr: 1.0e-3}
grid:
  variants:
    itc: {objective: {variant: itc}}
    oner: {objective: {variant: oner}}
  seed: [0, 1]
profiles:
  big:
    base: {train: {steps: 500}}
    grid: {seed: [0, 1, 2]}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edited(**sections: object) -> str:
    """MINIMAL with top-level sections replaced (None removes one)."""
    data = yaml.safe_load(MINIMAL)
    for key, value in sections.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


# --- the shipped specs -------------------------------------------------------------------------


def test_ablation_spec_has_the_six_paper_variants_on_the_built_in_recipe() -> None:
    spec = load_spec(ABLATION)
    runs = expand(spec)
    assert [run.run_name for run in runs] == [f"{v}/seed{seed}" for v in PAPER_VARIANTS for seed in (0, 1, 2)]
    assert spec.launcher.backend == "local" and spec.profile is None and spec.source_file == ABLATION
    assert spec.launcher.local.max_parallel == 2
    for run in runs:
        assert run.config.objective.variant == run.variant
        assert run.config.model.preset == "tiny" and run.config.data.source.kind == "shapes"
        assert run.config.model.head == ("per_modality" if run.variant == "itc_two_heads" else "shared")
        assert run.config.eval.sets == ["shapes", "shapes_cls"]
    assert len({run.config_hash for run in runs}) == 18


def test_ablation_paper_profile_is_the_paper_scale_recipe() -> None:
    spec = load_spec(ABLATION, profile="paper")
    runs = expand(spec)
    assert spec.profile == "paper"
    assert spec.launcher.backend == "slurm" and spec.launcher.slurm.cluster == "a100"
    assert spec.experiment_name == "oner-ablation-paper"
    assert len(runs) == 6 * 3 and {run.seed for run in runs} == {0, 1, 2}
    train = runs[0].config.train
    assert (train.batch_size, train.steps, train.warmup_steps) == (4096, 40 * 708, 708)
    assert (train.lr, train.weight_decay, train.betas) == (5e-4, 0.5, (0.9, 0.98))
    model = runs[0].config.model
    assert (model.preset, model.image_size, model.max_text_len) == ("vit_b16", 224, 40)
    # the paper's evaluation, never the built-in shapes; what the profile does not mention stays as the
    # top level has it (a deep merge): the objective, the two-heads row's head
    assert runs[0].config.eval.sets == ["imagenet", "coco5k"] and runs[0].config.data.vocab_size == 30522
    assert runs[0].config.objective.variant == "itc_two_heads"
    assert next(run for run in runs if run.variant == "itc_two_heads").config.model.head == "per_modality"


def test_smoke_spec_is_tiny() -> None:
    runs = expand(load_spec(SMOKE))
    assert [run.run_name for run in runs] == ["itc/seed0", "oner/seed0"]
    config = runs[0].config
    assert config.train.steps <= 10 and config.data.train_size <= 256 and config.model.width == 32


# --- expansion, names and hashes ---------------------------------------------------------------


def test_expand_crosses_variants_seeds_and_axes_in_order(tmp_path: Path) -> None:
    axes = {"train.lr": [1e-3, 3e-4], "objective.terms.mlm": [0.0, 0.5, 1.0]}
    grid = {"variants": {"itc": {"objective": {"variant": "itc"}}, "oner": None}, "seed": [3, 1], "axes": axes}
    runs = expand(load_spec(write(tmp_path, edited(grid=grid))))
    assert len(runs) == 2 * 2 * 2 * 3
    assert runs[0].run_name == "itc/seed3/train.lr=0.001/objective.terms.mlm=0.0"
    assert runs[1].run_name == "itc/seed3/train.lr=0.001/objective.terms.mlm=0.5"
    assert runs[6].run_name == "itc/seed1/train.lr=0.001/objective.terms.mlm=0.0"
    assert runs[-1].run_name == "oner/seed1/train.lr=0.0003/objective.terms.mlm=1.0"
    last = runs[-1].config
    assert (last.train.seed, last.train.lr, last.objective.terms) == (1, 3e-4, {"mlm": 1.0})
    assert runs[-1].config.objective.variant is None  # an empty variant is the base unchanged
    assert len({run.config_hash for run in runs}) == len(runs)


def test_only_filters_by_variant_seed_and_axis(tmp_path: Path) -> None:
    variants = {"itc": {"objective": {"variant": "itc"}}, "oner": {"objective": {"variant": "oner"}}}
    grid = {"variants": variants, "seed": [0, 1], "axes": {"train.lr": [1e-3, 3e-4]}}
    spec = load_spec(write(tmp_path, edited(grid=grid)))
    assert [run.run_name for run in expand(spec, parse_only("variant=oner,seed=1"))] == [
        "oner/seed1/train.lr=0.001",
        "oner/seed1/train.lr=0.0003",
    ]
    assert [run.run_name for run in expand(spec, {"train.lr": "3e-4", "seed": "0"})] == [
        "itc/seed0/train.lr=0.0003",
        "oner/seed0/train.lr=0.0003",
    ]


def test_parse_only_keeps_commas_inside_values() -> None:
    assert parse_only("variant=oner, train.betas=[0.9,0.95]") == {"variant": "oner", "train.betas": "[0.9,0.95]"}


def test_config_hash_ignores_layout_comments_order_and_number_spelling(tmp_path: Path) -> None:
    reordered = """\
# the same experiment, written differently
grid:
  seed: [0, 1]
  variants:
    oner:
      objective:
        variant: oner   # the final recipe
    itc: {objective: {variant: itc}}
base:
  train:
    lr: 0.001
    steps: 5
name: demo
"""
    first = {run.run_name: run.config_hash for run in expand(load_spec(write(tmp_path, MINIMAL, "a.yaml")))}
    second = {run.run_name: run.config_hash for run in expand(load_spec(write(tmp_path, reordered, "b.yaml")))}
    assert first == second


def test_config_hash_changes_with_a_real_config_change_only_where_it_applies() -> None:
    before = {run.run_name: run.config_hash for run in expand(load_spec(SMOKE))}
    after = {
        run.run_name: run.config_hash
        for run in expand(load_spec(SMOKE, overrides=["grid.variants.oner.objective.temperature_init=0.1"]))
    }
    assert after["itc/seed0"] == before["itc/seed0"]
    assert after["oner/seed0"] != before["oner/seed0"]
    renamed = {run.config_hash for run in expand(load_spec(SMOKE, overrides=["name=another", "description=x"]))}
    assert renamed == set(before.values())  # spec-level fields are not part of any run's config


def test_run_config_round_trips_through_its_json_dump() -> None:
    run = expand(load_spec(ABLATION, profile="paper"))[0]
    assert RunConfig.model_validate(run.config.model_dump(mode="json")) == run.config


# --- --set and profiles ------------------------------------------------------------------------


def test_set_values_are_typed_as_yaml() -> None:
    spec = load_spec(
        SMOKE,
        overrides=[
            "base.train.lr=3e-4",
            "launcher.backend=slurm",
            "grid.seed=[0,1,2]",
            "base.train.grad_clip=null",
            "base.eval.sets=[shapes]",
            "launcher.slurm.gpus_per_node=8",
            "tracking.experiment=my-exp",
        ],
    )
    runs = expand(spec)
    assert runs[0].config.train.lr == 3e-4 and runs[0].config.train.grad_clip is None
    assert runs[0].config.eval.sets == ["shapes"]
    assert spec.launcher.backend == "slurm" and spec.launcher.slurm.gpus_per_node == 8
    assert spec.grid.seed == [0, 1, 2] and len(runs) == 6
    assert spec.experiment_name == "my-exp"


def test_set_adds_a_whole_variant_an_axis_and_a_single_seed() -> None:
    spec = load_spec(
        SMOKE,
        overrides=["grid.variants.xmc={objective: {variant: xmc}}", "grid.axes.train.lr=[1e-3, 1e-2]", "grid.seed=7"],
    )
    names = [run.run_name for run in expand(spec)]
    assert names[-1] == "xmc/seed7/train.lr=0.01" and len(names) == 3 * 2


def test_set_applies_after_the_profile_and_later_sets_win(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert expand(load_spec(path, profile="big"))[0].config.train.steps == 500
    spec = load_spec(path, profile="big", overrides=["base.train.steps=7", "base.train.steps=9"])
    assert expand(spec)[0].config.train.steps == 9 and spec.grid.seed == [0, 1, 2]


def test_without_a_profile_the_top_level_is_the_recipe(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.profile is None and expand(spec)[0].config.train.steps == 5 and spec.grid.seed == [0, 1]


def test_exponent_floats_without_a_dot_are_floats(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL.replace("lr: 1.0e-3", "lr: 3e-4")))
    assert spec.base.train.lr == 3e-4


# --- bad input: each names the file, the dotted key and what is allowed ------------------------

BAD_FILES = [
    # (id, file text, expected key, fragments the message must contain)
    (
        "malformed-yaml",
        MINIMAL.replace("seed: [0, 1]", "seed: [0, 1"),
        "",
        ["line 9", "starts on line 8", "malformed YAML"],
    ),
    (
        "repeated-key",
        MINIMAL.replace("  seed: [0, 1]", "  seed: [0, 1]\n  seed: [2]"),
        "grid.seed",
        ["twice", "lines 8 and 9"],
    ),
    ("empty-file", "", "(top level)", ["empty file"]),
    ("not-a-mapping", "- name: demo\n", "(top level)", ["list"]),
    ("unknown-top-level-key", "nam: demo\n" + MINIMAL.split("\n", 1)[1], "nam", ["unknown key", "'name'?"]),
    ("unknown-nested-key", MINIMAL.replace("steps: 5,", "stpes: 5,"), "base.train.stpes", ["'steps'?"]),
    (
        "unknown-key-in-variant",
        edited(grid={"variants": {"oner": {"objective": {"termz": {"cmc": 1}}}}}),
        "grid.variants.oner.objective.termz",
        ["'terms'?"],
    ),
    ("wrong-type", edited(base={"model": {"width": "big"}}), "base.model.width", ["'big'", "integer"]),
    ("negative-lr", MINIMAL.replace("lr: 1.0e-3", "lr: -1.0e-3"), "base.train.lr", ["-0.001", "greater than 0"]),
    (
        "negative-term-weight",
        edited(grid={"variants": {"oner": {"objective": {"terms": {"cmc": -1}}}}}),
        "grid.variants.oner.objective.terms.cmc",
        ["-1", "greater than or equal to 0"],
    ),
    (
        "bad-head-in-variant",
        edited(grid={"variants": {"two": {"model": {"head": "both"}}}}),
        "grid.variants.two.model.head",
        ["'both'", "shared, per_modality"],
    ),
    ("bad-backend", edited(launcher={"backend": "slrum"}), "launcher.backend", ["debug, local, slurm", "'slurm'?"]),
    ("negative-requeues", edited(launcher={"slurm": {"max_requeues": -1}}), "launcher.slurm.max_requeues", ["-1"]),
    (
        "empty-experiment-name",
        edited(tracking={"experiment": ""}),
        "tracking.experiment",
        ["string should have at least 1 character"],
    ),
    ("missing-grid", edited(grid=None), "grid", ["required", "variants"]),
    ("empty-grid", edited(grid={"variants": {}}), "grid.variants", ["at least 1"]),
    ("variant-name-with-slash", edited(grid={"variants": {"a/b": None}}), "grid.variants.a/b", ["letters, digits"]),
    ("repeated-seeds", edited(grid={"variants": {"itc": None}, "seed": [0, 1, 0]}), "grid.seed", ["each seed once"]),
    ("negative-seed", edited(grid={"variants": {"itc": None}, "seed": [-1]}), "grid.seed.0", ["-1"]),
    (
        "axis-not-in-run-config",
        edited(grid={"variants": {"itc": None}, "axes": {"train.lrr": [1]}}),
        "grid.axes.train.lrr",
        ["'train.lr'?"],
    ),
    (
        "axis-is-the-seed",
        edited(grid={"variants": {"itc": None}, "axes": {"train.seed": [1, 2]}}),
        "grid.axes.train.seed",
        ["grid.seed"],
    ),
    (
        "axis-is-a-section",
        edited(grid={"variants": {"itc": None}, "axes": {"train": [1]}}),
        "grid.axes.train",
        ["train.seed"],
    ),
    (
        "axis-value-invalid",
        edited(grid={"variants": {"itc": None}, "axes": {"train.lr": [1e-3, -1.0]}}),
        "grid.axes.train.lr",
        ["-1.0", "greater than 0"],
    ),
    (
        "axis-without-values",
        edited(grid={"variants": {"itc": None}, "axes": {"train.lr": []}}),
        "grid.axes.train.lr",
        ["non-empty"],
    ),
    (
        "variants-with-the-same-config",
        edited(grid={"variants": {"a": {"train": {"lr": 0.1}}, "b": {"train": {"lr": 0.1}}}}),
        "grid.variants.b",
        ["a/seed0 and b/seed0", "same run config"],
    ),
    (
        "axis-values-with-the-same-config",
        edited(grid={"variants": {"a": None}, "axes": {"train.lr": [1, 1.0]}}),
        "grid.axes.train.lr",
        ["same run config"],
    ),
    (
        "betas-wrong-length",
        MINIMAL.replace("lr: 1.0e-3}", "lr: 1.0e-3, betas: [0.9]}"),
        "base.train.betas",
        ["[0.9]", "exactly 2 items"],
    ),
    (
        "broken-unselected-profile",
        edited(profiles={"big": {"base": {"train": {"steps": 0}}}}),
        "base.train.steps",
        ["profile 'big'", "profiles.big.base.train.steps"],
    ),
    (
        "unknown-key-in-profile",
        edited(profiles={"big": {"launcher": {"backnd": "slurm"}}}),
        "launcher.backnd",
        ["'backend'?", "profile 'big'"],
    ),
    ("loader-field-in-file", MINIMAL + "profile: big\n", "profile", ["--profile"]),
]


@pytest.mark.parametrize(("text", "key", "fragments"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_spec_file_is_reported_with_file_key_and_allowed(
    tmp_path: Path, text: str, key: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert caught.value.key == key
    assert re.match(rf"{re.escape(str(path))}(, line \d+)?: {re.escape(key + ': ') if key else ''}", message)
    assert "allowed: " in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


BAD_ARGUMENTS = [
    # (id, profile, --set overrides, --only text, expected key, fragments)
    ("unknown-profile", "bigg", [], None, "--profile", ["'bigg'", "one of: big", "'big'?"]),
    ("set-unknown-key", None, ["base.train.lrr=1"], None, "base.train.lrr", ["'lr'?", "--set base.train.lrr=1"]),
    ("set-unknown-section", None, ["lancher.backend=slurm"], None, "lancher", ["'launcher'?"]),
    ("set-into-unknown-variant", None, ["grid.variants.onr.train.lr=1"], None, "grid.variants.onr", ["'oner'?"]),
    ("set-below-a-value", None, ["base.train.lr.max=1"], None, "base.train.lr.max", ["single value"]),
    ("set-malformed-value", None, ["base.train.lr=[1"], None, "base.train.lr", ["not valid YAML"]),
    ("set-without-equals", None, ["base.train.lr"], None, "--set", ["dotted.key=value"]),
    ("set-profiles", None, ["profiles.big.name=x"], None, "profiles", ["--profile"]),
    (
        "set-wrong-type",
        None,
        ["base.train.steps=many"],
        None,
        "base.train.steps",
        ["'many'", "--set base.train.steps=many"],
    ),
    ("set-bad-backend", None, ["launcher.backend=k8s"], None, "launcher.backend", ["debug, local, slurm"]),
    (
        "set-bad-value-after-profile",
        "big",
        ["grid.seed=[1,1]"],
        None,
        "grid.seed",
        ["each seed once", "--set grid.seed"],
    ),
    ("only-unknown-variant", None, [], "variant=onr", "--only variant", ["'onr'", "'oner'?"]),
    ("only-unknown-key", None, [], "varient=oner", "--only", ["'variant'?"]),
    ("only-unknown-seed", None, [], "seed=5", "--only seed", ["one of: 0, 1"]),
]


@pytest.mark.parametrize(
    ("profile", "overrides", "only", "key", "fragments"),
    [case[1:] for case in BAD_ARGUMENTS],
    ids=[c[0] for c in BAD_ARGUMENTS],
)
def test_bad_command_line_argument_is_reported_with_file_and_key(
    tmp_path: Path, profile: str | None, overrides: list[str], only: str | None, key: str, fragments: list[str]
) -> None:
    path = write(tmp_path, MINIMAL)
    with pytest.raises(SpecError) as caught:
        spec = load_spec(path, profile, overrides)
        expand(spec, parse_only(only) if only else None)
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{path}: {key}:")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("text", ["variant", "variant=oner,variant=itc", "=oner", "seed="])
def test_malformed_only_is_reported(text: str) -> None:
    with pytest.raises(SpecError, match=r"^--only: .*allowed: "):
        parse_only(text)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=rf"^{path}: \(file\): cannot be read"):
        load_spec(path)


def test_expand_on_a_directly_built_spec_reports_the_variant_key() -> None:
    spec = Spec(name="x", grid={"variants": {"bad": {"train": {"steps": 0}}}})
    with pytest.raises(SpecError, match=r"grid\.variants\.bad\.train\.steps: 0 is not allowed"):
        expand(spec)


def test_docs_name_every_key_a_spec_may_contain() -> None:
    """docs/spec.md documents every section; a field added to a model must be added there too."""
    text = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    missing: list[str] = []
    pending: list[tuple[str, type]] = [("", Spec)]
    while pending:
        prefix, model = pending.pop()
        units = family_units(model)
        if units is not None:  # a unit family (data.source): every registered unit's keys
            pending.extend((prefix, unit) for unit in units)
            continue
        for key in keys_of(model):
            if f"`{key}`" not in text and f".{key}`" not in text and f"## {prefix}{key}\n" not in text:
                missing.append(prefix + key)
            field_type = unwrap(model.model_fields[key].annotation)
            if is_model(field_type):
                pending.append((f"{prefix}{key}.", field_type))
    assert not missing
