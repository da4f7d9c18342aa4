"""Validation of static configuration values, done in Python before (or while) tracing.

Inside jit the values are assumed valid: a traced value is not checked, a Python number is.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence


def check_range(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raises one clear ValueError line if the Python number `value` lies outside the interval."""
    if not isinstance(value, numbers.Real):  # a tracer or an array: the caller's responsibility
        return
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high or value != value:  # value != value: NaN
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} is out of range: expected a value in {interval}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raises one clear ValueError line if `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported: expected one of {', '.join(choices)}")
