"""The training objective: a weighted sum of named terms and the learnable temperature."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn

from oner_lab.model import OneTower
from oner_lab.objectives.registry import TERMS, TermOptions
from oner_lab.objectives.views import StepInputs, Views, ViewSettings


def masked_views(names: Mapping[str, float] | set[str] | frozenset[str]) -> frozenset[str]:
    """The views whose masked pass the named terms train (what `ViewSettings.masked_views` holds)."""
    return frozenset(TERMS[name].masked_view for name in names if TERMS[name].masked_view is not None)


class Objective(nn.Module):
    """Computes every active term on one batch; owns the shared contrastive temperature."""

    def __init__(
        self,
        weights: dict[str, float],
        settings: ViewSettings,
        temperature_init: float = 0.07,
        temperature_min: float = 0.01,
        learn_temperature: bool = True,
        options: Mapping[str, TermOptions] | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise KeyError(f"unknown objective terms {unknown}; allowed: {', '.join(sorted(TERMS))}")
        self.weights = dict(weights)
        self.settings = settings
        # on the module's device once (`.to` moves buffers), not copied from the tokenizer's CPU tensor each step;
        # not persistent: the tokenizer, saved beside the checkpoint, is where they come from
        self.register_buffer("special_ids", settings.special_ids.clone(), persistent=False)
        given = dict(options or {})
        self.options = {name: given.get(name) or TERMS[name].options() for name in self.weights}
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature_init)), requires_grad=learn_temperature)
        self.max_logit_scale = math.log(1 / temperature_min)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep 1/temperature in [1, 1/temperature_min] (CLIP clamps its logit scale at 100)."""
        self.logit_scale.clamp_(0, self.max_logit_scale)

    def temperature(self) -> float:
        return float(self.temperature_tensor())

    def temperature_tensor(self) -> torch.Tensor:
        """The temperature as a tensor on the parameter's device (read with the step's losses, no sync of its own)."""
        return torch.exp(-self.logit_scale.detach().clamp(0, self.max_logit_scale))

    def forward(
        self, online: OneTower, target: OneTower, inputs: StepInputs, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total, {named value: unweighted value}) for one batch; a term's value is the sum of its named values."""
        self.clamp_temperature()
        settings = replace(self.settings, special_ids=self.special_ids)
        views = Views(online, target, inputs, settings, self.logit_scale, generator)
        values: dict[str, torch.Tensor] = {}
        parts = []
        for name, weight in self.weights.items():
            named = dict(TERMS[name].loss(views, self.options[name]))
            clash = sorted(set(named) & set(values))
            if not named or clash:
                raise ValueError(
                    f"objective term {name!r} returned {sorted(named)}: expected one or more names, none taken by another term ({clash})"
                )
            values.update(named)
            parts.append(weight * sum(named.values()))
        return sum(parts), values
