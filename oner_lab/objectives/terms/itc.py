"""ITC: F(I) against F(T), both from the online encoder."""

import torch

from oner_lab.objectives.registry import register
from oner_lab.objectives.views import Views


@register("itc")
def itc(views: Views) -> torch.Tensor:
    return views.info_nce(views.contrast("I"), views.contrast("T"))
