"""Golden models: the numerical specification every RTL unit is checked against."""

from .config import PRESETS, AccelConfig, get_config

__all__ = ["AccelConfig", "PRESETS", "get_config"]
