"""CIC (contextual invariance): (F(I|T)+F(T|I))/2 online against the target (F(I)+F(T))/2."""

from oner_lab.objectives.infonce import mix
from oner_lab.objectives.registry import Term, TermOptions, register
from oner_lab.objectives.views import Views


def loss(views: Views, options: TermOptions) -> dict:
    return {"cic": views.info_nce(mix(views.embed("I|T"), views.embed("T|I")), views.target_mix())}


TERM = register(Term("cic", loss, views=("I|T", "T|I")))
