"""MMM: both maskings on the joint {image, text} input; the sum of its MLM and MIM parts."""

from oner_lab.objectives.registry import Term, TermOptions, register
from oner_lab.objectives.views import Views


def loss(views: Views, options: TermOptions) -> dict:
    out = views.output("I,T", masked=True)
    return {"mmm": views.mlm_loss(out) + views.mim_loss(out)}


TERM = register(Term("mmm", loss, views=("I,T",), masked_view="I,T"))
