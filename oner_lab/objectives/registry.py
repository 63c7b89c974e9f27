"""Objective terms by name. A term is one `Term` declaring what it needs beside its loss.

Everything the rest of the lab asks about a term is read from its declaration: which views its
left side reads, which masked pass it trains (so `masked_terms: false` drops it and unpaired data
needs it), whether it needs the shared joint head, and its own typed options
(`objective.options.<term>` in a spec). A new term is one module that calls `register`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from oner_lab.objectives.views import Views

View = Literal["I", "T", "I|T", "T|I", "I,T"]
VIEWS: tuple[str, ...] = ("I", "T", "I|T", "T|I", "I,T")


class TermOptions(BaseModel):
    """A term's own options, read from `objective.options.<term>`; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Loss = Callable[["Views", TermOptions], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Term:
    """One objective term.

    `loss(views, options)` returns named scalars (open_clip style): the term's value is their sum,
    weighted by `objective.terms.<name>`; each is logged as `train/loss_<key>`.
    `masked_view`: the view whose masked (MLM/MIM-corrupted) pass this term trains, None for a
    term on clean or contrastive passes. `joint_head`: its left side is the joint view `I,T`,
    which has no per-modality projection head.
    """

    name: str
    loss: Loss
    views: tuple[str, ...]
    masked_view: str | None = None
    joint_head: bool = False
    options: type[TermOptions] = field(default=TermOptions)

    def __post_init__(self) -> None:
        unknown = [view for view in (*self.views, self.masked_view) if view is not None and view not in VIEWS]
        if unknown:
            raise ValueError(f"term {self.name!r}: unknown views {unknown}; allowed: {', '.join(VIEWS)}")

    @property
    def masked(self) -> bool:
        """Whether it trains on a masked pass (dropped by `objective.masked_terms: false`)."""
        return self.masked_view is not None


TERMS: dict[str, Term] = {}


def register(term: Term) -> Term:
    """Make `term` available to configs under `term.name`."""
    if term.name in TERMS and TERMS[term.name] is not term:
        raise ValueError(f"objective term {term.name!r} registered twice")
    TERMS[term.name] = term
    return term


def terms_training(view: str) -> list[str]:
    """Names of the registered terms whose loss trains the masked pass of `view` (T: mlm, I: mim)."""
    return [name for name, term in TERMS.items() if term.masked_view == view]
