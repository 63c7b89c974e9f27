"""XMC (cross-modal mixup): (F(I)+F(T))/2 online against the same mixture from the target encoder."""

import torch

from oner_lab.objectives.infonce import mix
from oner_lab.objectives.registry import register
from oner_lab.objectives.views import Views


@register("xmc")
def xmc(views: Views) -> torch.Tensor:
    return views.info_nce(mix(views.contrast("I"), views.contrast("T")), views.target_mix())
