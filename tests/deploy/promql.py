"""Metric names in PromQL expressions, and the catalogue in docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METRICS_DOC = ROOT / "docs" / "metrics.md"

# PromQL keywords and modifiers that look like metric names.
KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_CATALOGUE_ROW = re.compile(r"^\| `([a-z_:][a-z0-9_:]*)` \| ([a-z ,]+) \|")


def catalogue() -> dict[str, str]:
    """Return each metric name in docs/metrics.md with its type column."""
    rows = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = _CATALOGUE_ROW.match(line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def served_names() -> set[str]:
    """Return every series name the catalogue allows, histogram series included."""
    names = set()
    for name, kind in catalogue().items():
        names.add(name)
        if kind.startswith("histogram"):
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def metric_names(expression: str) -> set[str]:
    """Return the metric names that a PromQL expression selects.

    Label matchers, string literals, range selectors, grouping clauses and
    Grafana variables are removed first, so what is left of each name-like
    word is a function (followed by a parenthesis), a keyword or a metric.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^{}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    clause = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    text = re.sub(clause, "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            continue
        if word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names
