"""The ablation table, built from runs logged to a real MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow_store import copy_store
from rich.console import Console

from oner_lab import analysis, table, tracking
from oner_lab.analysis import paper
from oner_lab.spec import Spec, expand

EVAL = {
    "eval/shapes/tr_r1": 0,
    "eval/shapes/tr_r5": 1,
    "eval/shapes/ir_r1": 2,
    "eval/shapes/ir_r5": 3,
    "eval/shapes_cls/top1": 4,
}


@pytest.fixture
def logged(mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Spec, list]:
    """itc and oner x seeds 0, 1 FINISHED; an unfinished xmc run; an oner run of an older config."""
    monkeypatch.chdir(tmp_path)
    uri = copy_store(mlflow_template, tmp_path)
    client = tracking.connect(uri)
    spec = Spec(
        name="table-test",
        tracking={"uri": uri},
        grid={
            "variants": {
                "itc": {"objective": {"variant": "itc"}},
                "oner": None,
                "xmc": {"objective": {"variant": "xmc"}},
            },
            "seed": [0, 1],
        },
    )
    planned = expand(spec)
    for run in planned:
        run_id = tracking.create_run(client, spec.experiment_name, run, spec, tmp_path / run.config_hash)
        with tracking.MlflowRunLogger(client, run_id) as logger:
            base = {"itc": 1.0, "oner": 10.0, "xmc": 100.0}[run.variant] + run.seed  # seed 0 -> b, seed 1 -> b + 1
            logger.log_metrics({key: base + offset for key, offset in EVAL.items()}, 5)
        if run.variant != "xmc":
            tracking.end_run(client, run_id, tracking.FINISHED)
    stale = Spec(
        name="table-test", tracking={"uri": uri}, base={"train": {"steps": 7}}, grid={"variants": {"oner": None}}
    )
    old = expand(stale)[0]
    old_id = tracking.create_run(client, spec.experiment_name, old, stale, tmp_path / "old")
    with tracking.MlflowRunLogger(client, old_id) as logger:
        logger.log_metrics({key: 1000.0 for key in EVAL}, 5)
    tracking.end_run(client, old_id, tracking.FINISHED)
    return uri, spec, planned


def test_one_row_per_variant_with_mean_std_n_of_this_plan_only(logged: tuple[str, Spec, list]) -> None:
    uri, spec, planned = logged
    result = table.spec_table(spec, planned).frame
    assert list(result.index) == ["itc", "oner"]  # xmc has no FINISHED run; spec order kept
    assert list(result["n"]) == [2, 2]
    assert list(result.columns) == [
        "n",
        "top-1",
        "top-1 std",
        "TR@1",
        "TR@1 std",
        "TR@5",
        "TR@5 std",
        "IR@1",
        "IR@1 std",
        "IR@5",
        "IR@5 std",
        "paper row",
    ]
    assert result.loc["oner", "TR@1"] == pytest.approx(10.5)  # the older config's 1000.0 is not mixed in
    assert result.loc["oner", "top-1"] == pytest.approx(14.5)
    assert result.loc["itc", "IR@5"] == pytest.approx(4.5)
    assert result.loc["itc", "TR@1 std"] == pytest.approx(math.sqrt(0.5))
    assert list(result["paper row"]) == ["ITC", "+ CMC (OneR)"]
    assert result.attrs["metrics"]["eval/shapes_cls/top1"] == "top-1"


def test_without_a_plan_runs_of_different_configs_are_never_averaged(logged: tuple[str, Spec, list]) -> None:
    uri, spec, _ = logged
    result = analysis.ablation_table(analysis.load_runs(uri, spec.experiment_name), eval_sets=["shapes", "shapes_cls"])
    # the train.steps=7 run was launched last: its config is the row's; seeds 0 and 1 (another config) are left out, with a footnote
    assert result.frame.loc["oner", "n"] == 1
    assert result.frame.loc["oner", "TR@1"] == pytest.approx(1000.0)
    change = f"train.steps: {spec.base.train.steps} -> 7"
    assert any(
        "oner: 2 run(s) of an earlier config left out" in note and change in note for note in result.footnotes
    ), result.footnotes


def test_two_sets_of_one_kind_are_named_in_their_columns() -> None:
    columns = analysis.metric_columns(
        ["coco", "flickr", "inet"], {"eval/coco/tr_r1", "eval/flickr/tr_r1", "eval/inet/top1"}
    )
    assert columns == {"eval/inet/top1": "top-1", "eval/coco/tr_r1": "coco TR@1", "eval/flickr/tr_r1": "flickr TR@1"}
    assert analysis.sets_note(columns) == "top-1: inet"


def test_printed_table_has_our_block_and_the_papers_block(logged: tuple[str, Spec, list]) -> None:
    _, spec, planned = logged
    console = Console(record=True, width=160)
    table.print_spec_table(spec, planned, console)
    text = console.export_text()
    ours, theirs = text.split("Paper (")
    assert "10.5 ± 0.7" in ours and "+ CMC (OneR)" in ours
    assert theirs.startswith(paper.ABLATION_SETTING)
    for method, values in paper.ABLATION_ROWS.items():
        assert method in theirs and f"{values[0]:.1f}" in theirs


def test_an_empty_experiment_says_so_and_still_shows_the_paper(tmp_path: Path) -> None:
    spec = Spec(
        name="nothing-yet", tracking={"uri": f"sqlite:///{tmp_path / 'absent.db'}"}, grid={"variants": {"oner": None}}
    )
    console = Console(record=True, width=160)
    table.print_spec_table(spec, expand(spec), console)
    text = console.export_text()
    assert "No FINISHED runs" in text and "+ CMC (OneR)" in text
    assert not (tmp_path / "absent.db").exists()  # reading the table creates no store
