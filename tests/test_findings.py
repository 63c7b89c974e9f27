"""The paper's findings under the ablation table: paired differences by seed, 95% intervals, verdicts;
built from runs logged to a real MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pytest
from mlflow import MlflowClient
from mlflow_store import copy_store
from scipy import stats

from oner_lab import analysis, tracking
from oner_lab.analysis import findings
from oner_lab.spec import Spec, expand

matplotlib.use("Agg")
METRICS = ("eval/shapes/tr_r1", "eval/shapes/tr_r5", "eval/shapes/ir_r1", "eval/shapes/ir_r5", "eval/shapes_cls/top1")
VARIANTS = ("itc_two_heads", "itc", "xmc", "xmc_cic", "oner", "oner_cumulative")
# Per variant, the score of seeds 0, 1, 2 (every metric of a run gets its seed's value).
SCORES = {
    "itc_two_heads": (30.0, 34.0, 32.0),  # vs itc: +10, +9, +11 -> agrees with the paper's + (collapse of one head)
    "itc": (20.0, 25.0, 21.0),
    "xmc": (40.0, 44.0, 41.0),  # vs itc: +20, +19, +20 -> agrees
    "xmc_cic": (41.0, 43.0, 42.0),  # vs xmc: +1, -1, +1 -> within noise
    "oner": (35.0, 40.0, 36.0),  # vs xmc_cic: -6, -3, -6 -> disagrees (paper: OneR above +XMC+CIC)
    "oner_cumulative": (45.0, 50.0, 46.0),  # vs oner: +10 each -> ours higher, the paper has no row
}


def log_ablation(uri: str, seeds: tuple[int, ...]) -> Spec:
    client = tracking.connect(uri)
    spec = Spec(
        name="findings-test",
        tracking={"uri": uri},
        grid={
            "variants": {
                v: {
                    "objective": {"variant": v},
                    **({"model": {"head": "per_modality"}} if v == "itc_two_heads" else {}),
                }
                for v in VARIANTS
            },
            "seed": list(seeds),
        },
    )
    for run in expand(spec):
        run_id = tracking.create_run(
            client, spec.experiment_name, run, spec, Path(uri[len("sqlite:///") :]).parent / run.config_hash
        )
        with tracking.MlflowRunLogger(client, run_id) as logger:
            logger.log_metrics({key: SCORES[run.variant][run.seed] for key in METRICS}, 300)
        tracking.end_run(client, run_id, tracking.FINISHED)
    return spec


def test_three_seeds_give_intervals_and_verdicts(mlflow_template: Path, tmp_path: Path) -> None:
    uri = copy_store(mlflow_template, tmp_path)
    spec = log_ablation(uri, (0, 1, 2))
    table = analysis.ablation_table(analysis.load_runs(uri, spec.experiment_name))
    frame = table.findings_frame
    assert frame is not None and list(frame["n"]) == [3] * 6

    def expected(better: str, baseline: str) -> tuple[float, float, float]:
        diffs = [b - a for a, b in zip(SCORES[baseline], SCORES[better])]
        mean = sum(diffs) / 3
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
        half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
        return mean, mean - half, mean + half

    for finding in findings.ABLATION_FINDINGS:
        row = frame.loc[finding.name]
        assert (row["ours"], row["low"], row["high"]) == pytest.approx(expected(finding.better, finding.baseline))
        assert row["per_seed"] == {s: SCORES[finding.better][s] - SCORES[finding.baseline][s] for s in range(3)}
    verdicts = dict(frame["verdict"])
    assert verdicts == {
        "two heads vs one head under ITC": "agrees",
        "+XMC over ITC": "agrees",
        "+CIC over +XMC": "within noise",
        "OneR (ITC+CMC) over ITC": "agrees",
        "OneR over +XMC+CIC": "disagrees",
        "cumulative reading (ITC+XMC+CIC+CMC) vs OneR": "ours higher; the paper has no row",
    }
    # The paper's difference is the same mean over its published columns (here all five).
    two_heads, itc = (findings.paper.ABLATION_ROWS[r] for r in ("ITC (two heads)", "ITC"))
    assert frame.loc["two heads vs one head under ITC", "paper"] == pytest.approx(
        sum(two_heads[:5]) / 5 - sum(itc[:5]) / 5
    )
    assert math.isnan(frame.loc["cumulative reading (ITC+XMC+CIC+CMC) vs OneR", "paper"])
    markdown = table.to_markdown()
    assert "**Findings:" in markdown and "| +CIC over +XMC | +0.8 | +0.3 [" in markdown
    assert markdown.index("**Findings:") > markdown.index("**Paper (")  # the table ends with its findings
    saved = table.save(tmp_path / "out", "ablation")
    assert (tmp_path / "out" / "ablation_findings.csv").exists() and saved
    figure = analysis.findings_figure(table)
    path = analysis.save_figure(figure, tmp_path / "out", "findings")
    assert path.stat().st_size > 10_000
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_yticklabels()] == list(frame.index)


def test_one_seed_says_so_instead_of_a_verdict(mlflow_template: Path, tmp_path: Path) -> None:
    uri = copy_store(mlflow_template, tmp_path)
    spec = log_ablation(uri, (0,))
    table = analysis.ablation_table(analysis.load_runs(uri, spec.experiment_name))
    assert set(table.findings_frame["verdict"]) == {findings.ONE_SEED}
    assert set(table.findings["ours Δ [95% CI]"]) >= {"+10.0", "+20.0"}  # a point, no interval


def test_verdict_rule() -> None:
    assert findings.verdict(3, 0.5, 2.0, 1.0, 4.0) == "agrees"
    assert findings.verdict(3, -2.0, -0.5, -1.0, 4.0) == "disagrees"
    assert findings.verdict(3, -0.5, 2.0, 1.0, 4.0) == "within noise"
    assert findings.verdict(0, math.nan, math.nan, math.nan, 4.0) == "no paired runs"


def log_runs(uri: str, spec: Spec, score: dict[tuple[str, int], float], metrics: tuple[str, ...]) -> dict:
    """Logs every run of `spec` FINISHED with each metric at `score[(variant, seed)]`; returns run ids."""
    client = tracking.connect(uri)
    ids = {}
    for run in expand(spec):
        run_id = tracking.create_run(
            client, spec.experiment_name, run, spec, Path(uri[len("sqlite:///") :]).parent / run.config_hash
        )
        with tracking.MlflowRunLogger(client, run_id) as logger:
            logger.log_metrics({key: score[run.variant, run.seed] for key in metrics}, 100)
        tracking.end_run(client, run_id, tracking.FINISHED)
        ids[run.variant, run.seed] = run_id
    return ids


def test_the_transfer_table_ends_with_the_captions_gain_per_column_and_their_difference(
    mlflow_template: Path, tmp_path: Path
) -> None:
    uri = copy_store(mlflow_template, tmp_path)
    two_heads = {"objective": {"variant": "itc_two_heads"}, "model": {"head": "per_modality"}}
    one_tower = {"objective": {"variant": "oner"}}
    more = {"data": {"max_objects": 1}}  # the second training-data row (the table's gain is row 2 - row 1)
    spec = Spec(
        name="transfer-findings",
        tracking={"uri": uri},
        grid={
            "variants": {
                "two_heads-base": two_heads,
                "two_heads-more": {**two_heads, **more},
                "one_tower-base": one_tower,
                "one_tower-more": {**one_tower, **more},
            },
            "seed": [0, 1, 2],
        },
    )
    base = {0: 10.0, 1: 12.0, 2: 11.0}
    gains = {"two_heads": (1.0, 2.0, 1.5), "one_tower": (3.0, 3.0, 3.5)}  # one tower gains more: +2, +1, +2
    score = {}
    for seed in (0, 1, 2):
        for column, gain in gains.items():
            score[f"{column}-base", seed] = base[seed]
            score[f"{column}-more", seed] = base[seed] + gain[seed]
    log_runs(uri, spec, score, ("eval/shapes_cls/top1", "eval/shapes/tr_r1", "eval/shapes/ir_r1"))
    table = analysis.transfer_table(analysis.load_runs(uri, spec.experiment_name))
    frame = table.findings_frame
    assert frame is not None and list(frame.index) == [
        "unpaired captions help two heads",
        "unpaired captions help the one tower",
        "the one tower gains more than two heads",
    ]
    assert frame["ours"].tolist() == pytest.approx([1.5, 19 / 6, 5 / 3])
    assert frame.loc["the one tower gains more than two heads", "per_seed"] == pytest.approx({0: 2.0, 1: 1.0, 2: 2.0})
    assert set(frame["verdict"]) == {"agrees"} and set(frame["n"]) == {3}
    paper_gain = {c: sum(findings.paper.TRANSFER_ROWS["gain"][c]) / 3 for c in ("two heads", "one tower")}
    assert frame["paper"].tolist() == pytest.approx(
        [paper_gain["two heads"], paper_gain["one tower"], paper_gain["one tower"] - paper_gain["two heads"]]
    )
    markdown = table.to_markdown()
    assert markdown.index("**Findings:") > markdown.index("**Paper (")


def test_the_retrieval_table_ends_with_fine_tuning_over_zero_shot_paired_by_seed(
    mlflow_template: Path, tmp_path: Path
) -> None:
    uri = copy_store(mlflow_template, tmp_path)
    spec = Spec(
        name="retrieval-findings",
        tracking={"uri": uri},
        grid={"variants": {"oner": {"objective": {"variant": "oner"}}, "oner_ft": {}}, "seed": [0, 1, 2]},
    )
    tuned = {0: 1.0, 1: 2.0, 2: -0.5}  # fine-tuned minus zero-shot, per seed
    score = {("oner", seed): 30.0 + seed for seed in (0, 1, 2)}
    score |= {("oner_ft", seed): 30.0 + seed + tuned[seed] for seed in (0, 1, 2)}
    keys = tuple(f"eval/coco5k/{kind}_r{k}" for kind in ("tr", "ir") for k in (1, 5, 10))
    ids = log_runs(uri, spec, score, keys)
    client = MlflowClient(tracking_uri=uri)
    for seed in (0, 1, 2):  # the fine-tuning runs name their pretraining run of the same seed
        client.set_tag(ids["oner_ft", seed], "mlflow.parentRunId", ids["oner", seed])
    table = analysis.retrieval_table(analysis.load_runs(uri, spec.experiment_name))
    row = table.findings_frame.loc["oner: fine-tuned on COCO over zero-shot"]
    assert row["ours"] == pytest.approx(2.5 / 3) and row["per_seed"] == pytest.approx(tuned)
    assert row["n"] == 3 and row["verdict"] == "within noise"  # -0.5 .. +2.0: the interval holds zero
    published = findings.paper.RETRIEVAL_ROWS["OneR"]
    gain = [
        t - z
        for t, z in zip(
            (*published.fine_tuned_tr, *published.fine_tuned_ir), (*published.zero_shot_tr, *published.zero_shot_ir)
        )
    ]
    assert row["paper"] == pytest.approx(sum(gain) / 6)
    assert "**Findings:" in table.to_markdown()
