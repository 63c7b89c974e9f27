"""The paper's published ablation (PAPER.md, "Tables to regenerate"), as data to print beside ours.

Setting [reading, strong]: CC3M, ViT-B/16, 40 epochs; columns are zero-shot ImageNet top-1 and
zero-shot MS-COCO 5K text/image retrieval recall, in percent.
"""

from __future__ import annotations

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
"""Our variant -> the paper's row it reproduces. `oner_cumulative` (ITC+XMC+CIC+CMC, the other
reading of "+ CMC") has no row of its own."""
