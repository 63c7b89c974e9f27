"""The paper's tables built from our runs: ablation, main retrieval, cross-modal transfer, and the
modality gap; mean ± std over seeds with the number of seeds, the paper's rows alongside.

Each table averages the runs `select_runs` keeps (footnotes say what it left out), one row per
variant (and grid axes). Values are as logged: recall and top-1 in percent. Differences to the
paper (`Δ` columns) appear only for metrics of the paper's own eval sets (`paper.EVAL_SETS`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

import pandas as pd

from oner_lab import metric_names
from oner_lab.analysis import findings, paper
from oner_lab.analysis.result import ResultTable
from oner_lab.analysis.runs import PARAM_PREFIX, metric_columns_like
from oner_lab.analysis.selection import select_runs

CLASSIFICATION_METRICS = metric_names.labels(metric_names.CLASSIFICATION)  # {"top1": "top-1"}
RETRIEVAL_METRICS = metric_names.labels(metric_names.RETRIEVAL)  # TR@1, TR@5, IR@1, IR@5
RECALLS = ("r1", "r5", "r10")
INDEX_NAME = "variant"
PAPER_COLUMN = "paper row"
HEAD_ARCH = {"shared": "one tower", "per_modality": "one tower, two heads"}


# --- which metrics --------------------------------------------------------------------------


def logged_metrics(runs: pd.DataFrame) -> set[str]:
    """Metric keys some run of `runs` logged."""
    return {key for key in metric_columns_like(runs, ".*") if runs[key].notna().any()}


def eval_sets_of(runs: pd.DataFrame) -> list[str]:
    """Eval sets in the order the runs' configs list them (param `eval.sets`), then any other logged set."""
    sets: dict[str, None] = {}
    for value in runs.get(PARAM_PREFIX + "eval.sets", pd.Series(dtype=object)).dropna():
        sets.update(dict.fromkeys(json.loads(value)))
    sets.update(dict.fromkeys(sorted(key.split("/")[1] for key in logged_metrics(runs) if key.startswith("eval/"))))
    return list(sets)


def metric_columns(eval_sets: Iterable[str], logged: set[str]) -> dict[str, str]:
    """MLflow metric key -> column label, in the paper's order: top-1 first, then TR@1, TR@5, IR@1, IR@5.

    A column appears when some run logged it, so a set's kind (classification or retrieval)
    need not be declared. Labels name the set only where two sets give the same metric.
    """
    sets = list(eval_sets)
    found = [
        (f"eval/{eval_set}/{name}", eval_set, label)
        for names in (CLASSIFICATION_METRICS, RETRIEVAL_METRICS)
        for eval_set in sets
        for name, label in names.items()
        if f"eval/{eval_set}/{name}" in logged
    ]
    repeated = {label for _, _, label in found if sum(other == label for _, _, other in found) > 1}
    return {key: f"{eval_set} {label}" if label in repeated else label for key, eval_set, label in found}


def sets_note(columns: dict[str, str]) -> str:
    """Which eval set each unqualified column comes from, e.g. `top-1: shapes_cls; TR/IR: shapes`."""
    parts = []
    for names, kind in ((CLASSIFICATION_METRICS, "top-1"), (RETRIEVAL_METRICS, "TR/IR")):
        sets = sorted(
            {key.split("/")[1] for key, label in columns.items() if key.rsplit("/", 1)[1] in names and " " not in label}
        )
        if sets:
            parts.append(f"{kind}: {', '.join(sets)}")
    return "; ".join(parts)


def _set_of_kind(runs: pd.DataFrame, metric: str, preferred: str) -> str | None:
    """The paper's set when some run logged `eval/<it>/<metric>`, else the first set that did."""
    logged = logged_metrics(runs)
    sets = [name for name in eval_sets_of(runs) if f"eval/{name}/{metric}" in logged]
    return preferred if preferred in sets else (sets[0] if sets else None)


def _is_paper_set(key: str) -> bool:
    return key.split("/")[1] in paper.EVAL_SETS.values()


# --- averaging ------------------------------------------------------------------------------


def objective_variant(run: pd.Series) -> str:
    """The run's `objective.variant` (what the paper's rows are keyed by), else its grid variant name."""
    value = run.get(PARAM_PREFIX + "objective.variant")
    return run["variant"] if value is None or pd.isna(value) or value == "null" else str(value)


def summarise(runs: pd.DataFrame, columns: dict[str, str], by: str = "row") -> tuple[pd.DataFrame, list[str]]:
    """Per `by` group (first-seen order): `n`, each label's mean and `<label> std`; footnotes for
    runs that lack a metric (its cell averages the other runs)."""
    labels = list(columns.values())
    if runs.empty:
        frame = pd.DataFrame(columns=["n", *[name for label in labels for name in (label, f"{label} std")]])
        return frame.rename_axis(INDEX_NAME), []
    values = pd.DataFrame(
        {label: runs[key] if key in runs else math.nan for key, label in columns.items()}, index=runs.index
    )
    values = values.astype(float)
    values[by] = runs[by]
    grouped = values.groupby(by, sort=False)
    frame = grouped[labels].mean()
    for label in labels:
        frame[f"{label} std"] = grouped[label].std(ddof=1)
    frame.insert(0, "n", grouped.size())
    frame = frame[["n", *[name for label in labels for name in (label, f"{label} std")]]].rename_axis(INDEX_NAME)
    footnotes = []
    for key, label in columns.items():
        lacking = runs[values[label].isna()]
        for group, missing in lacking.groupby(by, sort=False):
            names = ", ".join(missing["run_name"])
            footnotes.append(f"{group}: {names} logged no {key}; the {label} cell averages the other run(s) only")
    return frame, footnotes


def cell(mean: float, std: float, digits: int = 1) -> str:
    """`12.3 ± 0.4`; the mean alone for one seed; `-` when nothing was logged."""
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" if std is None or pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _signed(value: float, digits: int = 1) -> str:
    return "" if pd.isna(value) else f"{value:+.{digits}f}"


def _variant_of_rows(runs: pd.DataFrame) -> dict[str, str]:
    return {row: objective_variant(group.iloc[0]) for row, group in runs.groupby("row", sort=False)}


def _title(runs: pd.DataFrame, what: str) -> str:
    return f"Ours: {runs.attrs.get('experiment', '?')}, {what}, FINISHED runs, mean ± std over seeds"


def _dedupe(notes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(notes))


# --- the ablation ---------------------------------------------------------------------------


def paper_ablation_table() -> pd.DataFrame:
    """The paper's published ablation rows (CC3M, ViT-B/16), in percent."""
    return pd.DataFrame.from_dict(
        paper.ABLATION_ROWS, orient="index", columns=list(paper.ABLATION_COLUMNS)
    ).rename_axis("method")


def ablation_table(
    runs: pd.DataFrame,
    *,
    eval_sets: Iterable[str] | None = None,
    config_hashes: Iterable[str] | None = None,
    variants: Sequence[str] | None = None,
) -> ResultTable:
    """The ablation: per variant, top-1 and TR/IR@1/5 (every set logged), `paper row`, and `Δ <label>`
    to that row for the paper's eval sets. `frame.attrs["metrics"]` maps MLflow keys to labels.

    `config_hashes` limits it to one plan's runs; `variants` fixes the row order (a spec's).
    """
    selection = select_runs(runs, config_hashes=config_hashes)
    chosen = selection.runs
    columns = metric_columns(eval_sets if eval_sets is not None else eval_sets_of(chosen), logged_metrics(chosen))
    frame, missing = summarise(chosen, columns)
    row_variant = _variant_of_rows(chosen)
    frame[PAPER_COLUMN] = [paper.PAPER_ROW_OF_VARIANT.get(row_variant.get(row, ""), "") for row in frame.index]
    published = paper_ablation_table()
    compared = [(key, label) for key, label in columns.items() if _is_paper_set(key)]
    for key, label in compared:
        reference = published[label.rsplit(" ", 1)[-1]]
        frame[f"Δ {label}"] = [
            frame.at[row, label] - reference[name] if name else math.nan
            for row, name in zip(frame.index, frame[PAPER_COLUMN])
        ]
    if variants is not None:  # the spec's variant order; a variant's grid-axis rows stay together
        grid_variant = chosen.groupby("row", sort=False)["variant"].first()
        rank = {variant: position for position, variant in enumerate(variants)}
        frame = frame.loc[
            sorted((row for row in frame.index if grid_variant[row] in rank), key=lambda row: rank[grid_variant[row]])
        ]
    frame.attrs["metrics"] = columns
    labels = list(columns.values())
    display = pd.DataFrame(
        {
            INDEX_NAME: frame.index,
            "n": [str(int(n)) for n in frame["n"]],
            **{label: [cell(m, s) for m, s in zip(frame[label], frame[f"{label} std"])] for label in labels},
            **{f"Δ {label}": [_signed(value) for value in frame[f"Δ {label}"]] for _, label in compared},
            PAPER_COLUMN: [name or "-" for name in frame[PAPER_COLUMN]],
        }
    )
    footnotes = [*selection.footnotes, *missing]
    if labels and not compared:
        sets = sorted({key.split("/")[1] for key in columns})
        footnotes.append(
            f"Eval sets {', '.join(sets)} are not the paper's ({', '.join(paper.EVAL_SETS.values())}): "
            "the paper's rows are shown for reference, no differences are computed"
        )
    if frame.empty and not footnotes:
        footnotes.append("No FINISHED runs yet.")
    title = _title(runs, "ablation") + (f"; {note}" if (note := sets_note(columns)) else "")
    paper_cells = published.reset_index().astype({name: str for name in paper.ABLATION_COLUMNS})
    paper_title = f"Paper ({paper.ABLATION_SETTING}): published numbers, not ours"
    found = findings.findings_frame(chosen, columns)
    return ResultTable(
        title,
        frame,
        display,
        _dedupe(footnotes),
        paper_title,
        paper_cells,
        findings.findings_title(labels),
        findings.findings_display(found),
        found,
    )


# --- the main retrieval table ---------------------------------------------------------------


def _recalls(prefix: str, eval_set: str, direction: str) -> dict[str, str]:
    return {f"eval/{eval_set}/{direction.lower()}_{r}": f"{prefix} {direction}@{r[1:]}" for r in RECALLS}


def _joined(frame: pd.DataFrame, row: str, labels: list[str], digits: int = 1) -> str:
    """`62.9/86.3/92.5`, then `(± 0.3/0.1/0.2)` when several seeds were averaged."""
    means = [frame.at[row, label] for label in labels]
    if all(pd.isna(value) for value in means):
        return "-"
    text = "/".join("-" if pd.isna(value) else f"{value:.{digits}f}" for value in means)
    stds = [frame.at[row, f"{label} std"] for label in labels]
    if any(not pd.isna(value) for value in stds):
        text += " (± " + "/".join("-" if pd.isna(value) else f"{value:.{digits}f}" for value in stds) + ")"
    return text


def _published_recalls(values: tuple[float, float, float | None] | None) -> str:
    return "-" if values is None else "/".join("-" if value is None else f"{value:.1f}" for value in values)


def _source_kind(run: pd.Series) -> object:
    """`data.source.kind`; runs logged before sources were units logged it as `data.source`."""
    kind = run.get(PARAM_PREFIX + "data.source.kind")
    return run.get(PARAM_PREFIX + "data.source") if kind is None or pd.isna(kind) else kind


def _images(run: pd.Series) -> str:
    if _source_kind(run) == "shapes":
        return f"{int(run[PARAM_PREFIX + 'data.train_size']):,} shapes"
    return "-"


def paper_retrieval_table() -> pd.DataFrame:
    """The paper's main table (MS-COCO 5K) in its layout, as strings."""
    rows = [
        [
            method,
            row.arch,
            "O" if row.pretrained else "X",
            row.images,
            *map(_published_recalls, (row.zero_shot_tr, row.zero_shot_ir, row.fine_tuned_tr, row.fine_tuned_ir)),
        ]
        for method, row in paper.RETRIEVAL_ROWS.items()
    ]
    columns = ["method", "arch", "Pre.", "#images", "zero-shot TR", "zero-shot IR", "fine-tuned TR", "fine-tuned IR"]
    return pd.DataFrame(rows, columns=columns)


def _retrieval_differences(frame: pd.DataFrame, zero_shot: dict[str, str], fine_tuned: dict[str, str]) -> None:
    """Adds `Δ <label>` = ours - the paper's row (zero-shot, and fine-tuned where it published them)."""
    for row in frame.index:
        published = paper.RETRIEVAL_ROWS.get(frame.at[row, PAPER_COLUMN])
        if published is None:
            continue
        reference = dict(zip(zero_shot.values(), (*published.zero_shot_tr, *published.zero_shot_ir)))
        if published.fine_tuned_tr is not None:
            reference |= dict(zip(fine_tuned.values(), (*published.fine_tuned_tr, *published.fine_tuned_ir)))
        for label, value in reference.items():
            frame.loc[row, f"Δ {label}"] = math.nan if value is None else frame.at[row, label] - value


def _retrieval_display(frame: pd.DataFrame, chosen: pd.DataFrame, groups: list[list[str]]) -> pd.DataFrame:
    """The paper's layout: a row per variant, then a `Δ` row under each one compared with the paper."""
    first_run = chosen.groupby("row", sort=False).head(1).set_index("row")
    rows = []
    for row in frame.index:
        run = first_run.loc[row]
        head = HEAD_ARCH.get(run.get(PARAM_PREFIX + "model.head"), "-")
        rows.append(
            [
                row,
                head,
                "X",
                _images(run),
                str(int(frame.at[row, "n"])),
                *(_joined(frame, row, labels) for labels in groups),
            ]
        )
        if f"Δ {groups[0][0]}" in frame and not pd.isna(frame.at[row, f"Δ {groups[0][0]}"]):
            deltas = ["/".join(_signed(frame.at[row, f"Δ {label}"]) or "-" for label in labels) for labels in groups]
            rows.append([f"Δ {row} − paper {frame.at[row, PAPER_COLUMN]}", "", "", "", "", *deltas])
    columns = [
        "method",
        "arch",
        "Pre.",
        "#images",
        "n",
        "zero-shot TR",
        "zero-shot IR",
        "fine-tuned TR",
        "fine-tuned IR",
    ]
    return pd.DataFrame(rows, columns=columns)


def retrieval_table(runs: pd.DataFrame, *, eval_set: str | None = None) -> ResultTable:
    """The main table: zero-shot TR/IR R@1/5/10 per variant on `eval_set` (default: the paper's
    `coco5k` if logged, else the first retrieval set), and fine-tuned columns from runs whose
    `mlflow.parentRunId` tag names one of them (fine-tuning runs), averaged into the parent's row."""
    selection = select_runs(runs)
    chosen = selection.runs
    children = select_runs(runs[runs["parent_run_id"].notna()], top_level=False)
    footnotes = [*selection.footnotes, *children.footnotes]
    eval_set = eval_set or _set_of_kind(chosen, "tr_r1", paper.EVAL_SETS["retrieval"])
    if eval_set is None:
        eval_set = paper.EVAL_SETS["retrieval"]
        if not chosen.empty:
            footnotes.append("No run logged retrieval metrics (eval/<set>/tr_r1).")
    zero_shot = _recalls("zero-shot", eval_set, "TR") | _recalls("zero-shot", eval_set, "IR")
    fine_tuned = _recalls("fine-tuned", eval_set, "TR") | _recalls("fine-tuned", eval_set, "IR")
    frame, missing = summarise(chosen, zero_shot)
    tuned_runs = children.runs.assign(row=children.runs["parent_run_id"].map(dict(zip(runs["run_id"], runs["row"]))))
    tuned, _ = summarise(tuned_runs[tuned_runs["row"].isin(frame.index)], fine_tuned)
    tuned = tuned.rename(columns={"n": "fine-tuned n"}).reindex(frame.index)
    tuned["fine-tuned n"] = tuned["fine-tuned n"].fillna(0).astype(int)
    frame = frame.join(tuned)
    row_variant = _variant_of_rows(chosen)
    frame[PAPER_COLUMN] = [paper.RETRIEVAL_ROW_OF_VARIANT.get(row_variant.get(row, ""), "") for row in frame.index]
    if eval_set == paper.EVAL_SETS["retrieval"]:
        _retrieval_differences(frame, zero_shot, fine_tuned)
    elif not frame.empty:
        footnotes.append(
            f"Eval set {eval_set} is not the paper's ({paper.EVAL_SETS['retrieval']}): no differences are computed."
        )
    groups = [
        [label for label in [*zero_shot.values(), *fine_tuned.values()] if label.startswith(f"{stage} {direction}@")]
        for stage in ("zero-shot", "fine-tuned")
        for direction in ("TR", "IR")
    ]
    if not chosen.empty and children.runs.empty:
        footnotes.append("No fine-tuning runs (runs tagged mlflow.parentRunId) yet: the fine-tuned columns are empty.")
    if frame.empty and not footnotes:
        footnotes.append("No FINISHED runs yet.")
    title = _title(runs, f"retrieval on {eval_set} (R@1/R@5/R@10)")
    paper_title = f"Paper ({paper.RETRIEVAL_SETTING}): published numbers, not ours"
    display = _retrieval_display(frame, chosen, groups)
    found = _fine_tuning_findings(frame, chosen, tuned_runs, eval_set)
    labels = [label.split(" ", 1)[1] for label in zero_shot.values()]
    notes = _dedupe([*footnotes, *missing])
    blocks = _findings_blocks(found, findings.findings_title(labels))
    return ResultTable(title, frame, display, notes, paper_title, paper_retrieval_table(), *blocks)


def _findings_blocks(
    found: pd.DataFrame | None, title: str
) -> tuple[str | None, pd.DataFrame | None, pd.DataFrame | None]:
    """A ResultTable's last three fields: the findings' title, their printed rows and their numbers."""
    return (None, None, None) if found is None else (title, findings.findings_display(found), found)


def _fine_tuning_findings(
    frame: pd.DataFrame, chosen: pd.DataFrame, tuned_runs: pd.DataFrame, eval_set: str
) -> pd.DataFrame | None:
    """The paper's finding of the main table that one lab run can check: fine-tuning on COCO raises
    the zero-shot recalls (OneR: +1.5 on the mean of TR/IR R@1/5/10), paired by seed, per row the
    paper published both for. None when no row has a paper row with fine-tuned numbers."""
    keys = {key: label.strip() for key, label in (_recalls("", eval_set, "TR") | _recalls("", eval_set, "IR")).items()}
    rows = [
        (row, published)
        for row in frame.index
        if (published := paper.RETRIEVAL_ROWS.get(frame.at[row, PAPER_COLUMN])) is not None
        and published.fine_tuned_tr is not None
    ]
    if not rows:
        return None
    stages = []
    for row, _ in rows:
        stages.append(chosen[chosen["row"] == row].assign(variant=f"{row} zero-shot"))
        stages.append(tuned_runs[tuned_runs["row"] == row].assign(variant=f"{row} fine-tuned"))
    cells = pd.concat(stages)
    listed = []
    for row, published in rows:
        tuned = (*published.fine_tuned_tr, *published.fine_tuned_ir)
        zero = (*published.zero_shot_tr, *published.zero_shot_ir)
        both = [t - z for t, z in zip(tuned, zero) if t is not None and z is not None]
        gain = sum(both) / len(both)
        listed.append(
            findings.Finding(
                f"{row}: fine-tuned on COCO over zero-shot", f"{row} fine-tuned", f"{row} zero-shot", paper_value=gain
            )
        )
    return findings.findings_frame(cells, keys, tuple(listed))


# --- cross-modal transfer -------------------------------------------------------------------


_UNSET = "(unset)"


def _data_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, the `data.*` params that differ between the runs (`data.x=v; ...`), or the data source."""
    keys = [column for column in runs.columns if column.startswith(PARAM_PREFIX + "data.")]
    # a param a run did not log (a section that is null there, e.g. data.text_only) reads as unset,
    # not as missing: pandas would leave it out of nunique and the rows would merge
    values = runs[keys].astype(object).where(runs[keys].notna(), _UNSET).astype(str)
    varying = [key for key in keys if values[key].nunique() > 1]
    if not varying:
        kinds = [_source_kind(run) for _, run in runs.iterrows()]
        return pd.Series(["data" if kind is None else str(kind) for kind in kinds], index=runs.index, dtype=object)
    return values[varying].apply(
        lambda row: "; ".join(f"{key[len(PARAM_PREFIX) :]}={value}" for key, value in row.items() if value != _UNSET),
        axis=1,
    )


def _transfer_cell(frame: pd.DataFrame, row: str, column: str, labels: list[str]) -> str:
    """`8.54 / 11.31 / 7.20 (n=3)`; the gain row has no n."""
    text = " / ".join(
        "-" if pd.isna(value) else f"{value:.2f}" for value in (frame.at[row, f"{column} {label}"] for label in labels)
    )
    n = frame.at[row, f"{column} n"]
    return text if pd.isna(n) else f"{text} (n={int(n)})"


def paper_transfer_table() -> pd.DataFrame:
    rows = [
        [data, *(" / ".join(f"{value:.2f}" for value in cells[column]) for column in ("two heads", "one tower"))]
        for data, cells in paper.TRANSFER_ROWS.items()
    ]
    return pd.DataFrame(rows, columns=["training data", "two heads", "one tower"])


def transfer_table(runs: pd.DataFrame) -> ResultTable:
    """Cross-modal transfer: rows are training data (the `data.*` params that differ between runs),
    columns the variants (`itc_two_heads` = "two heads", `oner` = "one tower"), cells
    top-1 / TR@1 / IR@1; a `gain` row (second data row minus the first) when there are two."""
    selection = select_runs(runs)
    chosen = selection.runs.copy()
    footnotes = list(selection.footnotes)
    keys = {}
    if (top1_set := _set_of_kind(chosen, "top1", paper.EVAL_SETS["classification"])) is not None:
        keys[f"eval/{top1_set}/top1"] = "top-1"
    if (retrieval_set := _set_of_kind(chosen, "tr_r1", paper.EVAL_SETS["retrieval"])) is not None:
        keys |= {f"eval/{retrieval_set}/tr_r1": "TR@1", f"eval/{retrieval_set}/ir_r1": "IR@1"}
    chosen["data"] = _data_labels(chosen) if not chosen.empty else ""
    variants = [objective_variant(run) for _, run in chosen.iterrows()]
    chosen["column"] = [paper.TRANSFER_COLUMN_OF_VARIANT.get(variant, variant) for variant in variants]
    chosen["cell"] = [f"{data} | {column}" for data, column in zip(chosen["data"], chosen["column"])]
    kept = []
    for name, group in chosen.groupby("cell", sort=False):  # one grid row per cell, never two configs averaged
        rows = list(dict.fromkeys(group["row"]))
        if len(rows) > 1:
            footnotes.append(
                f"cell {name}: rows {', '.join(rows[:-1])} left out, only {rows[-1]} (launched last) shown"
            )
        kept.append(group[group["row"] == rows[-1]])
    chosen = pd.concat(kept) if kept else chosen
    columns = list(dict.fromkeys(chosen["column"]))
    data_rows = list(dict.fromkeys(chosen["data"]))
    frame = pd.DataFrame(index=pd.Index(data_rows, name="training data"))
    missing: list[str] = []
    for column in columns:
        part, notes = summarise(chosen[chosen["column"] == column], keys, by="data")
        missing += notes
        part = part.rename(columns=lambda name: f"{column} {name}")
        frame = frame.join(part)
    if len(data_rows) == 2:
        frame.loc["gain"] = frame.loc[data_rows[1]] - frame.loc[data_rows[0]]
        frame.loc["gain", [name for name in frame.columns if name.endswith((" std", " n"))]] = math.nan
    display = pd.DataFrame({"training data": frame.index})
    for column in columns:
        display[column] = [_transfer_cell(frame, row, column, list(keys.values())) for row in frame.index]
    if frame.empty and not footnotes:
        footnotes.append("No FINISHED runs yet.")
    metrics = " / ".join(f"{label} ({key.split('/')[1]})" for key, label in keys.items())
    title = _title(runs, f"cross-modal transfer; cells {metrics or 'top-1 / TR@1 / IR@1'}")
    paper_title = f"Paper ({paper.TRANSFER_SETTING}): published numbers, not ours"
    found, title_of_findings = None, ""
    if len(data_rows) == 2:  # the findings are about the gain from the first data row to the second
        cells = chosen.assign(variant=list(map(findings.transfer_cell, chosen["column"], chosen["data"])))
        found = findings.findings_frame(cells, keys, findings.transfer_findings(*data_rows))
        title_of_findings = (
            findings.findings_title(list(keys.values())) + f"; gain = {data_rows[1]} over {data_rows[0]}"
        )
    notes = _dedupe([*footnotes, *missing])
    blocks = _findings_blocks(found, title_of_findings)
    return ResultTable(title, frame, display, notes, paper_title, paper_transfer_table(), *blocks)


# --- modality gap ---------------------------------------------------------------------------


def gap_table(runs: pd.DataFrame, *, eval_set: str | None = None) -> ResultTable:
    """Final modality gap (distance between the image and text embedding centroids) and alignment
    (mean matched-pair cosine) per variant, on `eval_set` (default: the first retrieval set)."""
    selection = select_runs(runs)
    chosen = selection.runs
    eval_set = (
        eval_set or _set_of_kind(chosen, "modality_gap", paper.EVAL_SETS["retrieval"]) or paper.EVAL_SETS["retrieval"]
    )
    columns = {f"eval/{eval_set}/modality_gap": "modality gap", f"eval/{eval_set}/alignment": "alignment"}
    frame, missing = summarise(chosen, columns)
    display = pd.DataFrame(
        {
            INDEX_NAME: frame.index,
            "n": [str(int(n)) for n in frame["n"]],
            **{
                label: [cell(m, s, digits=3) for m, s in zip(frame[label], frame[f"{label} std"])]
                for label in columns.values()
            },
        }
    )
    footnotes = [*selection.footnotes, *missing]
    if frame.empty and not footnotes:
        footnotes.append("No FINISHED runs yet.")
    return ResultTable(
        _title(runs, f"final modality gap and alignment on {eval_set}"), frame, display, _dedupe(footnotes)
    )
