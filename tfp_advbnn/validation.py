"""Argument checks shared by the whole library: each raises ValueError naming the value.

Every public entry point validates its plain-Python arguments with these functions, so that a
bad value gets the same kind of message wherever it enters ("<name> must be ..., got <value>").
Tensor arguments inside compiled code are checked where they are used (see ``attacks``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


def is_int(value) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """True for finite Python and numpy reals (integers included), False for bools."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def number(name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """Checks a finite real in [low, high] (bounds optional, each open or closed); a float.

    Examples:
        >>> number("eps", 0.03, low=0, high=1)
        0.03
    """
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    bounds = " and ".join(b for b in (lo, hi) if b)
    wanted = f"a finite number {bounds}".strip()
    if not is_real(value):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def positive(name: str, value) -> float:
    """Checks a finite real > 0."""
    return number(name, value, low=0, low_open=True)


def non_negative(name: str, value) -> float:
    """Checks a finite real >= 0."""
    return number(name, value, low=0)


def unit_interval(name: str, value, *, open_low=False) -> float:
    """Checks a radius or step in pixel scale: [0, 1], or (0, 1] with ``open_low``."""
    return number(name, value, low=0, high=1, low_open=open_low)


def integer(name: str, value, *, minimum: int | None = None) -> int:
    """Checks an integer (not a bool) >= ``minimum``; an int."""
    if not is_int(value) or (minimum is not None and value < minimum):
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def optional_integer(name: str, value, *, minimum: int | None = None) -> int | None:
    """``integer`` that also accepts None (meaning "not set")."""
    return None if value is None else integer(name, value, minimum=minimum)


def choice(name: str, value, choices: Sequence):
    """Checks that ``value`` is one of ``choices``; returns it."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _non_empty_list(name: str, values, wanted: str):
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of {wanted}, got {values!r}")


def unit_values(name: str, values) -> tuple[float, ...]:
    """Checks a non-empty list of radii in [0, 1]; returns them sorted and unique."""
    _non_empty_list(name, values, "numbers in [0, 1]")
    for value in values:
        if not is_real(value) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} values must be numbers in [0, 1], got {value!r}")
    return tuple(sorted({float(v) for v in values}))


def integer_values(name: str, values, *, minimum: int = 1) -> tuple[int, ...]:
    """Checks a non-empty list of integers >= ``minimum``; returns them sorted and unique."""
    _non_empty_list(name, values, f"integers >= {minimum}")
    for value in values:
        if not is_int(value) or value < minimum:
            raise ValueError(f"{name} values must be integers >= {minimum}, got {value!r}")
    return tuple(sorted({int(v) for v in values}))


def positive_pair(name: str, value, *, allow_scalar: bool = True) -> tuple[int, int]:
    """Checks a pair of positive ints (a kernel size, an image size (H, W)); a pair.

    With ``allow_scalar`` a single positive int ``n`` is also taken, as ``(n, n)``.
    """
    if allow_scalar and is_int(value):
        value = (value, value)
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(is_int(v) and v > 0 for v in value)
    ):
        wanted = "a positive int or a pair of them" if allow_scalar else "two positive integers"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value[0]), int(value[1])


def seed(name: str, value) -> int | None:
    """Checks an RNG seed: None (non-deterministic) or an integer >= 0."""
    return optional_integer(name, value, minimum=0)
