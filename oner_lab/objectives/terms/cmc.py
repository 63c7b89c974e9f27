"""CMC (contextual mixup): F(I,T|I,T) online against the target (F(I)+F(T))/2."""

import torch

from oner_lab.objectives.registry import register
from oner_lab.objectives.views import Views


@register("cmc")
def cmc(views: Views) -> torch.Tensor:
    return views.info_nce(views.contrast("I,T"), views.target_mix())
