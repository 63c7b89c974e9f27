"""MIM: SimMIM masked patch regression on the image-only input."""

import torch

from oner_lab.objectives.registry import register
from oner_lab.objectives.views import Views


@register("mim")
def mim(views: Views) -> torch.Tensor:
    return views.mim_loss(views.output("I", masked=True))
