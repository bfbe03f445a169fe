"""The base of the pipelines' typed results: ``to_dict()`` is what ``metrics.json`` holds."""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any

__all__ = ["Result", "live"]


def live(default: Any = None) -> Any:
    """A result field that holds a live object (a BNN, a fit history, a path): kept out of ``to_dict``."""
    return field(default=default, repr=False, compare=False, metadata={"saved": False})


def _plain(value: Any) -> Any:
    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Result:
    """Mixin of the result dataclasses: ``to_dict()`` (plain data, nested results included)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                if f.metadata.get("saved", True)}
