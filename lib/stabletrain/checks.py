"""Argument checks, one line at each call site: each returns the value or raises a
``TypeError``/``ValueError`` that names the parameter and what it accepts."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_int", "check_positive"]


def check_int(name: str, value: Any, *, min: int | None = None) -> int:
    """An ``int`` (not a ``bool``) ``>= min``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if min is not None and value < min:
        raise ValueError(f"{name} must be an int >= {min}, got {value}")
    return value


def check_positive(name: str, value: Any) -> float:
    """A finite real number ``> 0`` (not a ``bool`` or a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number > 0, got {type(value).__name__} {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)
