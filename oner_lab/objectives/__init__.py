"""Objective terms (itc, xmc, cic, cmc, mlm, mim, mmm), their registry and named variants."""

from oner_lab.objectives import terms  # noqa: F401  (registers every term)
from oner_lab.objectives.infonce import gather_with_grad, info_nce, mix
from oner_lab.objectives.objective import Objective, masked_views
from oner_lab.objectives.registry import TERMS, Term, TermOptions, register, terms_training
from oner_lab.objectives.variants import VARIANTS, Variant, resolve_terms
from oner_lab.objectives.views import StepInputs, Views, ViewSettings

__all__ = [
    "TERMS",
    "VARIANTS",
    "Objective",
    "StepInputs",
    "Term",
    "TermOptions",
    "Variant",
    "ViewSettings",
    "Views",
    "gather_with_grad",
    "info_nce",
    "masked_views",
    "mix",
    "register",
    "resolve_terms",
    "terms_training",
]
