"""Objective terms (itc, xmc, cic, cmc, mlm, mim, mmm), their registry and named variants."""

from oner_lab.objectives import terms  # noqa: F401  (registers every term)
from oner_lab.objectives.infonce import gather_with_grad, info_nce, mix
from oner_lab.objectives.objective import Objective
from oner_lab.objectives.registry import TERMS, register
from oner_lab.objectives.variants import MASKED_TERMS, VARIANTS, Variant, resolve_terms
from oner_lab.objectives.views import StepInputs, Views, ViewSettings

__all__ = [
    "MASKED_TERMS",
    "TERMS",
    "VARIANTS",
    "Objective",
    "StepInputs",
    "Variant",
    "ViewSettings",
    "Views",
    "gather_with_grad",
    "info_nce",
    "mix",
    "register",
    "resolve_terms",
]
