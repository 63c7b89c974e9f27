"""Spec: pydantic models of an experiment spec and of one run's config."""

from oner_lab.spec.config import RunConfig

__all__ = ["RunConfig"]
