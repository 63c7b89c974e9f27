"""MIM: SimMIM masked patch regression on the image-only input."""

from oner_lab.objectives.registry import Term, TermOptions, register
from oner_lab.objectives.views import Views


def loss(views: Views, options: TermOptions) -> dict:
    return {"mim": views.mim_loss(views.output("I", masked=True))}


TERM = register(Term("mim", loss, views=("I",), masked_view="I"))
