"""Argument checks shared by the public API: each names the argument, the value given and the
allowed range, and is raised where the argument enters (before any long computation)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional

__all__ = ["check_int", "check_number", "check_choice"]


def check_int(name: str, value: Any, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``; ``TypeError`` / ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int{_range(minimum, maximum)}, got {value!r} ({type(value).__name__})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{_range(minimum, maximum)}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, *, minimum: Optional[float] = None, maximum: Optional[float] = None,
                 exclusive_minimum: bool = False) -> float:
    """``value`` as a finite float in range; ``TypeError`` / ``ValueError`` naming ``name``.

    ``exclusive_minimum``: the value must be strictly greater than ``minimum`` (e.g. a scale > 0).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_scalar_tensor(value):
        raise TypeError(f"{name} must be a number{_range(minimum, maximum, exclusive_minimum)}, got {value!r} "
                        f"({type(value).__name__})")
    v = float(value)
    low_bad = minimum is not None and (v <= minimum if exclusive_minimum else v < minimum)
    if not math.isfinite(v) or low_bad or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be a finite number{_range(minimum, maximum, exclusive_minimum)}, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _is_scalar_tensor(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point()


def _range(minimum: Any, maximum: Any, exclusive: bool = False) -> str:
    if minimum is None and maximum is None:
        return ""
    if maximum is None:
        return f" {'>' if exclusive else '>='} {minimum}"
    if minimum is None:
        return f" <= {maximum}"
    return f" in {'(' if exclusive else '['}{minimum}, {maximum}]"
