"""MMM: both maskings on the joint {image, text} input; the sum of its MLM and MIM parts."""

import torch

from oner_lab.objectives.registry import register
from oner_lab.objectives.views import Views


@register("mmm")
def mmm(views: Views) -> torch.Tensor:
    out = views.output("I,T", masked=True)
    return views.mlm_loss(out) + views.mim_loss(out)
