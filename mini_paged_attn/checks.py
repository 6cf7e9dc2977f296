"""Argument checks shared by the Python layer: each names the argument."""
from __future__ import annotations


def check_int(name: str, value: object) -> int:
    """TypeError unless ``value`` is an int (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def positive(name: str, value: object) -> int:
    """ValueError unless ``value`` is an int > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative(name: str, value: object) -> int:
    """ValueError unless ``value`` is an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value
