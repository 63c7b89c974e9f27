"""CIC (contextual invariance): (F(I|T)+F(T|I))/2 online against the target (F(I)+F(T))/2."""

import torch

from oner_lab.objectives.infonce import mix
from oner_lab.objectives.registry import register
from oner_lab.objectives.views import Views


@register("cic")
def cic(views: Views) -> torch.Tensor:
    return views.info_nce(mix(views.embed("I|T"), views.embed("T|I")), views.target_mix())
