"""Tower sizes by name, the one list of presets: `model.preset` allows exactly these names. Imports
nothing heavy, so the spec validates a preset without loading the model. `tiny` is sized for the
built-in ablation on a 2-core CPU."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

HeadKind = Literal["shared", "per_modality"]


@dataclass(frozen=True)
class TowerConfig:
    """Every dimension of the single tower. Plain data, so the model never sees the spec loader."""

    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    image_size: int
    max_text_len: int
    proj_dim: int
    vocab_size: int = 30522
    head: HeadKind = "shared"
    drop_path: float = 0.0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


PRESETS: dict[str, TowerConfig] = {
    # 24 px images in 8 px patches: one patch per cell of the built-in data's 3x3 position grid
    "tiny": TowerConfig(
        width=96, depth=4, num_heads=4, mlp_ratio=2.0, patch_size=8, image_size=24, max_text_len=20, proj_dim=128
    ),
    "vit_s16": TowerConfig(
        width=384, depth=12, num_heads=6, mlp_ratio=4.0, patch_size=16, image_size=224, max_text_len=40, proj_dim=256
    ),
    "vit_b16": TowerConfig(
        width=768, depth=12, num_heads=12, mlp_ratio=4.0, patch_size=16, image_size=224, max_text_len=40, proj_dim=256
    ),
}


def tower_config(preset: str, **overrides: object) -> TowerConfig:
    """The preset with every non-None override applied."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    known = {f.name for f in fields(TowerConfig)}
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None and k in known})
