"""MLM: masked language modelling on the text-only input."""

import torch

from oner_lab.objectives.registry import register
from oner_lab.objectives.views import Views


@register("mlm")
def mlm(views: Views) -> torch.Tensor:
    return views.mlm_loss(views.output("T", masked=True))
