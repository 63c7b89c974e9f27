"""The paper's findings as rows a researcher can quote: the paper's difference, ours as the mean
and 95% interval of per-seed paired differences, and a verdict (agrees, disagrees, within noise).

A finding compares two variants on a score: the mean of the table's metric columns (top-1 and
TR/IR@1/5 for the ablation), so one number carries the finding; the paper's difference is the
same mean over its published rows. Differences are paired by seed, because runs of one seed share
their data order and initial weights, which removes most of the seed-to-seed noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from oner_lab.analysis import paper

AGREES, DISAGREES, NOISE, ONE_SEED, NO_PAIRS = (
    "agrees",
    "disagrees",
    "within noise",
    "one seed: no interval",
    "no paired runs",
)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Finding:
    """`better` minus `baseline` (variant names); `paper_rows` the paper's ablation rows for the two, if any.

    `less`: a difference in differences, `(better - baseline) - (less[0] - less[1])` per seed ("the one
    tower gains more than two heads"). `paper_value`: the paper's difference where it is not two
    ablation rows (the transfer table's gains).
    """

    name: str
    better: str
    baseline: str
    paper_rows: tuple[str, str] | None = None
    less: tuple[str, str] | None = None
    paper_value: float | None = None


ABLATION_FINDINGS = (
    Finding("two heads vs one head under ITC", "itc_two_heads", "itc", ("ITC (two heads)", "ITC")),
    Finding("+XMC over ITC", "xmc", "itc", ("+ XMC", "ITC")),
    Finding("+CIC over +XMC", "xmc_cic", "xmc", ("+ XMC + CIC", "+ XMC")),
    Finding("OneR (ITC+CMC) over ITC", "oner", "itc", ("+ CMC (OneR)", "ITC")),
    Finding("OneR over +XMC+CIC", "oner", "xmc_cic", ("+ CMC (OneR)", "+ XMC + CIC")),
    Finding("cumulative reading (ITC+XMC+CIC+CMC) vs OneR", "oner_cumulative", "oner", None),
)


def transfer_cell(column: str, data: str) -> str:
    """The variant key of one transfer-table cell (column = head, data = training-data row)."""
    return f"{column} | {data}"


def transfer_findings(without: str, with_captions: str) -> tuple[Finding, ...]:
    """The transfer table's findings between its two data rows (variant keys from `transfer_cell`):
    the captions' gain for each column, and whether the one tower gains more (the paper's claim).
    The paper's values are the means of its three gains (top-1, TR@1, IR@1)."""
    gain = {
        column: sum(paper.TRANSFER_ROWS["gain"][column]) / len(paper.TRANSFER_METRICS)
        for column in ("two heads", "one tower")
    }
    two = (transfer_cell("two heads", with_captions), transfer_cell("two heads", without))
    one = (transfer_cell("one tower", with_captions), transfer_cell("one tower", without))
    return (
        Finding("unpaired captions help two heads", *two, paper_value=gain["two heads"]),
        Finding("unpaired captions help the one tower", *one, paper_value=gain["one tower"]),
        Finding(
            "the one tower gains more than two heads",
            *one,
            less=two,
            paper_value=gain["one tower"] - gain["two heads"],
        ),
    )


def interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean and the two-sided 95% Student-t interval of paired differences (NaN bounds for one)."""
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return mean, math.nan, math.nan
    from scipy import stats  # here, not at import: scipy.stats adds about a second to every CLI start

    sd = pd.Series(differences).std(ddof=1)
    half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(n: int, low: float, high: float, mean: float, paper_difference: float | None) -> str:
    """agrees / disagrees when the interval excludes zero (by sign against the paper's), else within noise."""
    if n == 0:
        return NO_PAIRS
    if n == 1:
        return ONE_SEED
    if low <= 0 <= high:
        return NOISE
    if paper_difference is None:
        return f"ours {'higher' if mean > 0 else 'lower'}; the paper has no row"
    return AGREES if (mean > 0) == (paper_difference > 0) else DISAGREES


def paired_differences(scores: pd.DataFrame, finding: Finding) -> pd.Series:
    """Per seed present for every variant the finding names: score(better) - score(baseline), less
    the second difference of a difference in differences."""
    wide = scores.pivot_table(index="seed", columns="variant", values="score", aggfunc="mean")
    named = (finding.better, finding.baseline, *(finding.less or ()))
    if any(variant not in wide for variant in named):
        return pd.Series(dtype=float)
    difference = wide[finding.better] - wide[finding.baseline]
    if finding.less is not None:
        difference = difference - (wide[finding.less[0]] - wide[finding.less[1]])
    return difference.dropna()


def run_scores(runs: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """One row per run: variant, seed, and its score (the mean of the table's metric columns)."""
    keys = [key for key in columns if key in runs]
    if runs.empty or not keys:
        return pd.DataFrame(columns=["variant", "seed", "score"])
    score = runs[keys].astype(float).mean(axis=1, skipna=False)
    return pd.DataFrame({"variant": runs["variant"].astype(str), "seed": runs["seed"], "score": score}).dropna()


def paper_difference(finding: Finding, labels: list[str]) -> float | None:
    """The paper's `better - baseline` on the mean of the published columns among `labels`."""
    if finding.paper_value is not None:
        return finding.paper_value
    if finding.paper_rows is None:
        return None
    names = [name for name in paper.ABLATION_COLUMNS if name in {label.rsplit(" ", 1)[-1] for label in labels}]
    if not names:
        return None
    index = [paper.ABLATION_COLUMNS.index(name) for name in names]
    better, baseline = (paper.ABLATION_ROWS[row] for row in finding.paper_rows)
    return sum(better[i] - baseline[i] for i in index) / len(index)


def findings_frame(
    runs: pd.DataFrame, columns: dict[str, str], findings: tuple[Finding, ...] = ABLATION_FINDINGS
) -> pd.DataFrame:
    """Numbers of each finding: paper, ours mean, 95% low/high, n seeds, verdict, per-seed differences."""
    scores = run_scores(runs, columns)
    rows = []
    for finding in findings:
        differences = paired_differences(scores, finding)
        published = paper_difference(finding, list(columns.values()))
        n = len(differences)
        mean, low, high = interval(differences.tolist()) if n else (math.nan, math.nan, math.nan)
        rows.append(
            {
                "finding": finding.name,
                "paper": math.nan if published is None else published,
                "ours": mean,
                "low": low,
                "high": high,
                "n": n,
                "verdict": verdict(n, low, high, mean, published),
                "per_seed": {int(seed): float(value) for seed, value in differences.items()},
            }
        )
    return pd.DataFrame(rows).set_index("finding")


def findings_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows as printed: `+4.2 [+1.0, +7.4]` for ours, the paper's difference, n, verdict."""

    def ours(row: pd.Series) -> str:
        if pd.isna(row["ours"]):
            return "-"
        if pd.isna(row["low"]):
            return f"{row['ours']:+.1f}"
        return f"{row['ours']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}]"

    return pd.DataFrame(
        {
            "finding": frame.index,
            "paper Δ": ["-" if pd.isna(value) else f"{value:+.1f}" for value in frame["paper"]],
            "ours Δ [95% CI]": [ours(row) for _, row in frame.iterrows()],
            "seeds": [str(int(n)) for n in frame["n"]],
            "verdict": list(frame["verdict"]),
        }
    )


def findings_title(labels: list[str]) -> str:
    metric = ", ".join(labels) if labels else "no metric"
    return (
        f"Findings: Δ of the mean of ({metric}), paired by seed; 95% Student-t interval; "
        "agrees / disagrees when the interval excludes 0, else within noise"
    )
