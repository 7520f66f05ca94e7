"""The metric names a PromQL expression reads, and the names the worker exports: enough to
catch a query that names a metric nobody writes (a typo, a renamed metric)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from streams.metrics import IngestMetrics

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every scrape target


def exported_names() -> set[str]:
    """Every sample name a worker's /metrics page can carry."""
    names = set()
    for family in IngestMetrics(CollectorRegistry()).registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers in metric position: strings, label matchers, ranges, grouping clauses and
    function calls removed first."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group()
        if name.lower() in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        found.add(name)
    return found
