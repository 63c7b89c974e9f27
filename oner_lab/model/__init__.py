"""The single tower, its attention masks, heads, momentum copy and presets."""

from oner_lab.model.masks import VIEWS, attention_mask
from oner_lab.model.momentum import ema_update, momentum_at, momentum_copy
from oner_lab.model.tower import OneTower, TowerOutput, patchify
from oner_lab.presets import PRESETS, TowerConfig, tower_config

__all__ = [
    "PRESETS",
    "VIEWS",
    "OneTower",
    "TowerConfig",
    "TowerOutput",
    "attention_mask",
    "ema_update",
    "momentum_at",
    "momentum_copy",
    "patchify",
    "tower_config",
]
