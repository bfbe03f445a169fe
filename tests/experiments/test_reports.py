"""The demo's report holds only numbers of its run: every number in the Markdown of a quick demo
is a value of that run's results (metrics, settings, counts), up to the printed rounding."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from bayesdistill.experiments import reports

NUMBER = re.compile(r"(?<![\w.])[-+]?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?(?![\w])")
#: measurements that the report used to quote from other experiments (docs/function-space.md)
QUOTED = ("71.5", "71.9", "82.1", "89.3", "88.6", "72.4", "0.108", "0.031", "0.044", "-12.4", "50,000", "50000")


def _values(obj, out: list[float]) -> list[float]:
    """Every number of a result: numeric leaves, and the numbers inside strings (layer names,
    the prior "Normal(0, 1)", ...); lists also count (their lengths)."""
    if isinstance(obj, bool) or obj is None:
        return out
    if isinstance(obj, (int, float)):
        out.append(float(obj))
    elif isinstance(obj, str):
        out += [float(t) for t in NUMBER.findall(obj)]
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _values(k, out)
            _values(v, out)
    elif isinstance(obj, (list, tuple)):
        out.append(float(len(obj)))
        for v in obj:
            _values(v, out)
    return out


def _matches(token: str, values: list[float]) -> bool:
    x = float(token)
    mantissa = token.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    if "e" in token.lower():
        scale = 10 ** math.floor(math.log10(abs(x))) if x else 1.0
        tol = 0.5 * 10 ** -decimals * scale
    else:
        tol = 0.5 * 10 ** -decimals if decimals else 1e-9
    return any(abs(v - x) <= tol * (1 + 1e-9) for v in values)


@pytest.fixture(scope="module")
def run(quick_demo: tuple[Path, str]) -> tuple[str, list[float]]:
    out, _ = quick_demo
    values: list[float] = []
    for part in ("teacher", "student", "function-space"):
        _values(json.loads((out / part / "metrics.json").read_text()), values)
    return (out / "report.md").read_text(), values


def test_every_number_in_the_report_comes_from_the_run(run: tuple[str, list[float]]) -> None:
    report, values = run
    text = report
    for reference in reports.REFERENCES.values():  # citations (author, year): text, not measurements
        text = text.replace(reference, "")
    tokens = NUMBER.findall(text)
    assert len(tokens) > 100  # the tables and the settings are there
    foreign = [t for t in tokens if not _matches(t, values)]
    assert not foreign, f"numbers in report.md that are not in the run's results: {foreign}"


def test_the_report_quotes_no_measurements(run: tuple[str, list[float]]) -> None:
    report, values = run
    # a published number may appear only as (part of) a number this run measured: 0.1083 or a
    # measured 0.108 is fine, a quoted 0.108 that the run did not produce is not
    quoted = [t for t in NUMBER.findall(report) if t in QUOTED and not _matches(t, values)]
    quoted += [q for q in QUOTED if "," in q and q in report]  # "50,000" is not one NUMBER token
    assert not quoted, f"report.md quotes numbers that this run did not measure: {quoted}"
    assert "docs/function-space.md" in report  # more experiments are pointed at, without numbers
    source = Path(reports.__file__).read_text()
    assert not re.search(r"[0-9]+\.[0-9]+ ?%", source)  # no percentages written into the report code
    assert not [q for q in QUOTED if q in source]


def test_the_checker_matches_printed_roundings_only() -> None:
    assert _matches("0.1235", [0.12346]) and _matches("+1.8", [1.849]) and _matches("1.33e-04", [1.3349e-4])
    assert _matches("12714", [12714.0]) and not _matches("12714", [12714.4])
    assert not _matches("89.3", [0.893, 89.36, 8.93]) and not _matches("0.108", [0.1086])
    assert NUMBER.findall("cnn-deep on mnist1d, MNIST-1D, pair0, 40-256-256-10, N(0, 1), -0.5e-3") == [
        "40", "256", "256", "10", "0", "1", "-0.5e-3"]
