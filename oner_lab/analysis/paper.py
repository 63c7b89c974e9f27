"""The paper's published tables (docs/paper.md, "The tables the lab regenerates"), as data to print beside ours.

Every number is in percent. Ablation setting [reading, strong]: CC3M, ViT-B/16, 40 epochs;
zero-shot ImageNet top-1 and MS-COCO 5K retrieval. Main table: 4M pairs, MS-COCO 5K.
Transfer table: SBU pairs, with and without CC3M captions added as unpaired text.
"""

from __future__ import annotations

from typing import NamedTuple

EVAL_SETS = {"retrieval": "coco5k", "classification": "imagenet"}
"""The eval-set names (as specs name them) that follow the paper's protocols: only metrics of
these sets are compared with the paper's numbers (differences); any other set is ours alone."""

ABLATION_SETTING = "CC3M, ViT-B/16, 40 epochs; zero-shot ImageNet top-1, MS-COCO 5K retrieval"

ABLATION_COLUMNS = ("top-1", "TR@1", "TR@5", "IR@1", "IR@5")

ABLATION_ROWS: dict[str, tuple[float, float, float, float, float]] = {
    "CLIP": (17.1, 15.0, 34.8, 10.9, 26.7),
    "SLIP": (23.0, 21.7, 45.1, 15.6, 35.2),
    "ITC (two heads)": (17.5, 10.4, 26.8, 10.7, 26.4),
    "ITC": (1.6, 0.8, 2.5, 0.7, 2.2),
    "+ XMC": (22.1, 25.2, 48.1, 15.2, 33.6),
    "+ XMC + CIC": (22.9, 25.4, 48.1, 16.3, 35.5),
    "+ CMC (OneR)": (23.7, 25.5, 48.2, 16.9, 36.9),
}

PAPER_ROW_OF_VARIANT: dict[str, str] = {
    "itc_two_heads": "ITC (two heads)",
    "itc": "ITC",
    "xmc": "+ XMC",
    "xmc_cic": "+ XMC + CIC",
    "oner": "+ CMC (OneR)",
}
"""Our variant -> the paper's ablation row it reproduces. `oner_cumulative` (ITC+XMC+CIC+CMC,
the other reading of "+ CMC") has no row of its own."""

RETRIEVAL_SETTING = "MS-COCO 5K test, zero-shot and fine-tuned; R@1/R@5/R@10"

Recalls = tuple[float, float, float | None]
"""R@1, R@5, R@10 (FLAVA's R@10 is not published: None)."""


class RetrievalRow(NamedTuple):
    arch: str
    pretrained: bool  # "Pre.": initialised from pretrained weights
    images: str
    zero_shot_tr: Recalls
    zero_shot_ir: Recalls
    fine_tuned_tr: Recalls | None
    fine_tuned_ir: Recalls | None


RETRIEVAL_ROWS: dict[str, RetrievalRow] = {
    "ImageBert": RetrievalRow(
        "one tower", True, "6M", (44.0, 71.2, 80.4), (32.3, 59.0, 70.2), (66.4, 89.8, 94.4), (50.5, 78.7, 87.1)
    ),
    "ViLT": RetrievalRow(
        "one tower", True, "4M", (56.5, 82.6, 89.6), (40.4, 70.0, 81.1), (61.5, 86.3, 92.7), (42.7, 72.9, 83.1)
    ),
    "Uni-Perceiver": RetrievalRow(
        "one tower", False, "44.3M", (57.7, 85.6, 92.3), (46.3, 75.0, 84.0), (64.7, 87.8, 93.7), (48.3, 75.9, 84.5)
    ),
    "OneR": RetrievalRow(
        "one tower", False, "4M", (62.9, 86.3, 92.5), (47.0, 74.7, 84.1), (66.1, 87.8, 93.2), (48.3, 76.0, 85.2)
    ),
    "CLIP": RetrievalRow("two towers", False, "400M", (58.4, 81.5, 88.1), (37.8, 62.4, 72.2), None, None),
    "FLAVA": RetrievalRow("two legs", True, "70M", (42.7, 76.8, None), (38.4, 67.5, None), None, None),
    "ALBEF": RetrievalRow(
        "two legs", True, "4M", (68.7, 89.5, 94.7), (50.1, 76.4, 84.5), (73.1, 91.4, 96.0), (56.8, 81.5, 89.2)
    ),
    "TCL": RetrievalRow(
        "two legs", True, "4M", (71.4, 90.8, 95.4), (53.5, 79.0, 87.1), (75.6, 92.8, 96.7), (59.0, 83.2, 89.9)
    ),
}

RETRIEVAL_ROW_OF_VARIANT = {"oner": "OneR"}
"""Our variant -> the paper's main-table row it reproduces."""

TRANSFER_SETTING = "SBU pairs, then + CC3M captions as unpaired text; ImageNet top-1 / COCO TR@1 / IR@1"

TRANSFER_METRICS = ("top-1", "TR@1", "IR@1")

TRANSFER_COLUMN_OF_VARIANT = {"itc_two_heads": "two heads", "oner": "one tower"}
"""Our variant -> the paper's transfer-table column."""

TRANSFER_ROWS: dict[str, dict[str, tuple[float, float, float]]] = {
    "SBU": {"two heads": (7.28, 8.88, 5.73), "one tower": (6.49, 8.60, 5.77)},
    "SBU + CC3M captions only": {"two heads": (8.59, 10.41, 6.87), "one tower": (8.54, 11.31, 7.20)},
    "gain": {"two heads": (1.31, 1.53, 1.14), "one tower": (2.07, 2.71, 1.43)},
}
