"""Helpers of the experiment reports: mean ± std, Markdown tables, and tables written into a docs
page between markers, so that no number in a docs page is typed by hand.

A docs page holds ``<!-- BEGIN <name> -->`` ... ``<!-- END <name> -->`` blocks; the experiment
script renders each block from its JSON and :func:`fill_blocks` replaces the text between the
markers. ``tests/test_experiment_docs.py`` re-renders the blocks from the committed JSON and
checks that the page holds exactly that.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

__all__ = ["mean_std", "fmt", "fill_blocks", "blocks_of", "per_seed"]

_BLOCK = re.compile(r"(<!-- BEGIN (?P<name>[\w:.-]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.S)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(values: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± std`` of ``values * scale`` (sample std; ``-`` for none)."""
    m, s = mean_std([v * scale for v in values if v is not None])
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def blocks_of(text: str) -> dict[str, str]:
    """The ``BEGIN``/``END`` blocks of a page: name -> body."""
    return {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}


def fill_blocks(path: Path, blocks: Mapping[str, str], *, strict: bool = True) -> list[str]:
    """Replace the bodies of the named blocks of the page ``path``; returns the names filled.
    ``strict``: every block must exist in the page."""
    text = Path(path).read_text()
    present = blocks_of(text)
    missing = [k for k in blocks if k not in present]
    if strict and missing:
        raise KeyError(f"{path}: no block(s) {missing}; the page has {sorted(present)}")

    def repl(m: re.Match) -> str:
        name = m.group("name")
        if name not in blocks:
            return m.group(0)
        body = blocks[name].rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    Path(path).write_text(_BLOCK.sub(repl, text))
    return [k for k in blocks if k in present]


def per_seed(values: Sequence[Optional[float]], digits: int = 1, scale: float = 100.0) -> str:
    return " ".join("-" if v is None else f"{v * scale:.{digits}f}" for v in values)
