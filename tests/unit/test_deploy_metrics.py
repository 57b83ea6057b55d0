"""Every metric the Grafana dashboard (deploy/grafana) and the Prometheus rules
(deploy/prometheus/rules.yml) query is one that coordinator/observability/metrics.py
defines, read from its registry: a metric renamed on one side and not the other shows
here, not as an empty panel or an alert that can never fire."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import CollectorRegistry

from accord.coordinator.observability import metrics
from tests.harness import REPO

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "accord.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
# Series Prometheus makes itself, not an exporter.
PROMETHEUS_OWN = frozenset({"up"})
# The series names each metric type exposes (metrics.py disables the `_created` ones).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}

_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
     "unless", "offset", "inf", "nan"}
)  # fmt: skip


def metrics_read(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once label
    matchers, ranges and grouping clauses are cut, that call nothing and are no keyword."""
    bare = _RANGE.sub(" ", _BRACES.sub(" ", _CLAUSE.sub(" ", expr)))
    return {
        name for name, call in _IDENT.findall(bare) if not call and name.lower() not in _KEYWORDS
    }


def defined_series() -> set[str]:
    registries = [v for v in vars(metrics).values() if isinstance(v, CollectorRegistry)]
    assert registries, "metrics.py holds no CollectorRegistry"
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"])
            assert found, var["query"]
            exprs.append(found.group(1))
    return exprs


def rules_queries() -> tuple[list[str], set[str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    return [r["expr"] for r in rules], {r["record"] for r in rules if "record" in r}


def test_metrics_read_finds_selected_names_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, kind) (rate(a_bucket{ns=~"$x"}[$__rate_interval])))'
        " / ignoring(code) group_left sum(rate(b_total[5m])) or c * 0 > bool 1e3"
    )
    assert metrics_read(expr) == {"a_bucket", "b_total", "c"}


def test_every_metric_queried_is_defined_in_metrics_py() -> None:
    defined = defined_series()
    assert {"grpc_server_handling_seconds_bucket", "accord_lock_grants_total"} <= defined
    rule_exprs, recorded = rules_queries()
    board = dashboard_queries()
    assert len(board) > 30 and len(rule_exprs) > 5
    read_somewhere: set[str] = set()
    for expr in board + rule_exprs:
        read = metrics_read(expr)
        if by_name := re.search(r'__name__=~"([^"]*)"', expr):  # e.g. a variable's query
            assert any(re.fullmatch(by_name.group(1), m) for m in defined), expr
        else:
            assert read, f"no metric found in {expr!r}"
        unknown = read - defined - recorded - PROMETHEUS_OWN
        assert not unknown, f"{sorted(unknown)} (in {expr!r}) are not defined by metrics.py"
        read_somewhere |= read
    # Every Accord and gRPC metric has a panel or a rule (process_* and python_* need none).
    shown = {m for m in defined if m.startswith(("accord_", "grpc_"))}
    families = {re.sub(r"_(bucket|sum|count)$", "", m) for m in shown}
    unshown = {f for f in families if not any(s.startswith(f) for s in read_somewhere)}
    assert not unshown, f"no panel or rule reads {sorted(unshown)}"
