"""An objective term from outside the package: `align`, 1 - cos(F(I), F(T)) of matched pairs, scaled."""

from __future__ import annotations

from pydantic import Field

from oner_lab.objectives import Term, TermOptions, Views, register


class AlignOptions(TermOptions):
    scale: float = Field(default=1.0, gt=0)


def loss(views: Views, options: AlignOptions) -> dict:
    cosine = (views.contrast("I") * views.contrast("T")).sum(-1)
    return {"align": options.scale * (1 - cosine).mean()}


TERM = register(Term("align", loss, views=("I", "T"), options=AlignOptions))
