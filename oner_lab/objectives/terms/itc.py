"""ITC: F(I) against F(T), both from the online encoder."""

from oner_lab.objectives.registry import Term, TermOptions, register
from oner_lab.objectives.views import Views


def loss(views: Views, options: TermOptions) -> dict:
    return {"itc": views.info_nce(views.contrast("I"), views.contrast("T"))}


TERM = register(Term("itc", loss, views=("I", "T")))
