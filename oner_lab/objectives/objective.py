"""The training objective: a weighted sum of named terms and the learnable temperature."""

from __future__ import annotations

import math

import torch
from torch import nn

from oner_lab.model import OneTower
from oner_lab.objectives.registry import TERMS
from oner_lab.objectives.views import StepInputs, Views, ViewSettings


class Objective(nn.Module):
    """Computes every active term on one batch; owns the shared contrastive temperature."""

    def __init__(
        self,
        weights: dict[str, float],
        settings: ViewSettings,
        temperature_init: float = 0.07,
        temperature_min: float = 0.01,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise KeyError(f"unknown objective terms {unknown}; allowed: {', '.join(sorted(TERMS))}")
        self.weights = dict(weights)
        self.settings = settings
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature_init)), requires_grad=learn_temperature)
        self.max_logit_scale = math.log(1 / temperature_min)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep 1/temperature in [1, 1/temperature_min] (CLIP clamps its logit scale at 100)."""
        self.logit_scale.clamp_(0, self.max_logit_scale)

    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach().clamp(0, self.max_logit_scale)))

    def forward(
        self, online: OneTower, target: OneTower, inputs: StepInputs, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total, {term: unweighted value}) for one batch."""
        self.clamp_temperature()
        views = Views(online, target, inputs, self.settings, self.logit_scale, generator)
        values = {name: TERMS[name](views) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values
