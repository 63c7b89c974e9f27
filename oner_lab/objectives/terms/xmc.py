"""XMC (cross-modal mixup): (F(I)+F(T))/2 online against the same mixture from the target encoder."""

from oner_lab.objectives.infonce import mix
from oner_lab.objectives.registry import Term, TermOptions, register
from oner_lab.objectives.views import Views


def loss(views: Views, options: TermOptions) -> dict:
    return {"xmc": views.info_nce(mix(views.contrast("I"), views.contrast("T")), views.target_mix())}


TERM = register(Term("xmc", loss, views=("I", "T")))
