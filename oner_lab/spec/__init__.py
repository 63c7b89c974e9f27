"""Spec: pydantic models of an experiment spec and of one run's config; loading and grid expansion.

spec = load_spec("experiments/ablation.yaml", profile="paper", overrides=["base.train.lr=3e-4"])
for run in expand(spec, parse_only("variant=oner")):
    run.run_name, run.config_hash, run.config   # "oner/seed0", "3f2a...", RunConfig
"""

from oner_lab.spec.config import RunConfig
from oner_lab.spec.errors import SpecError
from oner_lab.spec.loader import load_spec
from oner_lab.spec.models import (
    GridConfig,
    LauncherConfig,
    LocalConfig,
    SlurmConfig,
    Spec,
    TrackingConfig,
)
from oner_lab.spec.plan import PlannedRun, config_hash, expand, parse_only

__all__ = [
    "GridConfig",
    "LauncherConfig",
    "LocalConfig",
    "PlannedRun",
    "RunConfig",
    "SlurmConfig",
    "Spec",
    "SpecError",
    "TrackingConfig",
    "config_hash",
    "expand",
    "load_spec",
    "parse_only",
]
