"""oner_lab: reproduce and extend OneR, the single-tower vision-language model."""

__version__ = "0.1.0"
