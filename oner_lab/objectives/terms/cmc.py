"""CMC (contextual mixup): F(I,T|I,T) online against the target (F(I)+F(T))/2."""

from oner_lab.objectives.registry import Term, TermOptions, register
from oner_lab.objectives.views import Views


def loss(views: Views, options: TermOptions) -> dict:
    return {"cmc": views.info_nce(views.contrast("I,T"), views.target_mix())}


TERM = register(Term("cmc", loss, views=("I,T",), joint_head=True))
