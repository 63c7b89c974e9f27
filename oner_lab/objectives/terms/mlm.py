"""MLM: masked language modelling on the text-only input."""

from oner_lab.objectives.registry import Term, TermOptions, register
from oner_lab.objectives.views import Views


def loss(views: Views, options: TermOptions) -> dict:
    return {"mlm": views.mlm_loss(views.output("T", masked=True))}


TERM = register(Term("mlm", loss, views=("T",), masked_view="T"))
