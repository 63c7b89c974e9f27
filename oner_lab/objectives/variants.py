"""The ablation's named term sets, exactly as docs/paper.md lists them (cumulative reading)."""

from __future__ import annotations

from dataclasses import dataclass

MASKED_TERMS = frozenset({"mlm", "mim", "mmm"})


@dataclass(frozen=True)
class Variant:
    """A named set of terms (all weight 1.0, docs/paper.md [reading]) and the head it needs."""

    terms: tuple[str, ...]
    head: str = "shared"


VARIANTS: dict[str, Variant] = {
    "itc_two_heads": Variant(("itc", "mlm", "mim"), head="per_modality"),
    "itc": Variant(("itc", "mlm", "mim")),
    "xmc": Variant(("itc", "xmc", "mlm", "mim")),
    "xmc_cic": Variant(("itc", "xmc", "cic", "mlm", "mim")),
    "oner": Variant(("itc", "cmc", "mlm", "mim", "mmm")),
    "oner_cumulative": Variant(("itc", "xmc", "cic", "cmc", "mlm", "mim", "mmm")),
}


def resolve_terms(variant: str | None, terms: dict[str, float], masked_terms: bool) -> dict[str, float]:
    """Term -> weight: the variant's terms at 1.0, then explicit `terms` on top; masked terms
    dropped when `masked_terms` is false; zero weights removed."""
    weights = {name: 1.0 for name in VARIANTS[variant].terms} if variant else {}
    weights.update(terms)
    if not masked_terms:
        weights = {k: v for k, v in weights.items() if k not in MASKED_TERMS}
    return {k: v for k, v in weights.items() if v > 0}
