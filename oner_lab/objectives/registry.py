"""Objective terms by name. A term is a function of the step's `Views` returning a scalar."""

from __future__ import annotations

from collections.abc import Callable

import torch

from oner_lab.objectives.views import Views

Term = Callable[[Views], torch.Tensor]
TERMS: dict[str, Term] = {}


def register(name: str) -> Callable[[Term], Term]:
    """Decorator: make a term available to configs under `name`."""

    def add(fn: Term) -> Term:
        if name in TERMS:
            raise ValueError(f"objective term {name!r} registered twice")
        TERMS[name] = fn
        return fn

    return add
