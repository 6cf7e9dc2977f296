"""Argument checks shared by the Python layer: each names the argument and
returns the value as a plain Python int or float (numpy scalars are accepted)."""
from __future__ import annotations

import math
import numbers


def is_int(value: object) -> bool:
    """An int, numpy integer included; bool is not."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: object) -> int:
    """TypeError unless ``value`` is an int (bool is not)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def positive(name: str, value: object) -> int:
    """ValueError unless ``value`` is an int > 0."""
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def non_negative(name: str, value: object) -> int:
    """ValueError unless ``value`` is an int >= 0."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def finite_real(name: str, value: object) -> float:
    """ValueError unless ``value`` is a finite real number (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
