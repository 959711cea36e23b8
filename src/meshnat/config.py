"""Checks shared by every config dataclass's `__post_init__` (each raises ConfigError naming
the field and the bad value)."""

from __future__ import annotations

import math

from meshnat.errors import ConfigError


def require_positive(config: object, *names: str) -> None:
    """Each field must be a finite number > 0 (durations, rates)."""
    for name in names:
        value = getattr(config, name)
        if type(value) not in (int, float) or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")


def require_in_range(config: object, low: int, high: int, *names: str) -> None:
    """Each field must be an int in [low, high] (counts, ports)."""
    for name in names:
        value = getattr(config, name)
        if type(value) is not int or not low <= value <= high:
            raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
