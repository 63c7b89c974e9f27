"""oner_lab: reproduce and extend OneR, the single-tower vision-language model."""

__version__ = "0.1.0"

from oner_lab import startup as _startup

_startup.pause_in_job_process()  # a job process imports torch, timm and MLflow next (startup.py says why)
