"""Writes deploy/grafana/dashboards/accord.json, the Grafana dashboard of Accord's metrics.

The dashboard is kept as this program rather than as hand-edited JSON: each panel is one
line of PromQL and a title here, and the layout (rows, grid positions, ids) follows from
their order. `python deploy/grafana/dashboard.py` rewrites the JSON; `--check` exits 1
if the committed JSON differs from what this program writes (tests/unit checks it too).

Every query filters on the `instance` variable (replicas) and, where the metric carries
it, on the `namespace` variable; the datasource is a variable as well, so the file works
both provisioned (deploy/grafana/provisioning) and imported by hand.

Error handling: none beyond Python's; a failed write leaves the previous file in place.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).parent / "dashboards" / "accord.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE = 'instance=~"$instance"'
NS = f'{INSTANCE}, namespace=~"$namespace"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 8


def quantiles(metric: str, selector: str, by: str, unit: str, title: str, note: str) -> Panel:
    """p50 and p99 of a histogram, per label `by` (empty: overall)."""
    group = f"le, {by}" if by else "le"
    legend = "{{" + by + "}}" if by else ""
    return Panel(
        title,
        tuple(
            (
                f"histogram_quantile({q}, sum by ({group}) "
                f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
                f"p{int(q * 100)} {legend}".strip(),
            )
            for q in (0.5, 0.99)
        ),
        unit,
        note,
    )


def per_method(q: float) -> Panel:
    return Panel(
        f"Unary latency p{int(q * 100)} by method",
        (
            (
                f"histogram_quantile({q}, sum by (le, grpc_service, grpc_method) "
                f'(rate(grpc_server_handling_seconds_bucket{{{INSTANCE}, grpc_type="unary"}}'
                f"[{RATE}])))",
                "{{grpc_service}}/{{grpc_method}}",
            ),
        ),
        "s",
        "Streams are left out: a stream's handling time is how long it stayed open.",
        width=12,
    )


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Golden signals per method",
        (
            Panel(
                "Calls/s by method",
                (
                    (
                        "sum by (grpc_service, grpc_method) "
                        f"(rate(grpc_server_handled_total{{{INSTANCE}}}[{RATE}]))",
                        "{{grpc_service}}/{{grpc_method}}",
                    ),
                ),
                "reqps",
                width=12,
            ),
            Panel(
                "Share of calls by status code (not OK)",
                (
                    (
                        "sum by (grpc_code) "
                        f'(rate(grpc_server_handled_total{{{INSTANCE}, grpc_code!="OK"}}[{RATE}]))'
                        " / ignoring(grpc_code) group_left sum "
                        f"(rate(grpc_server_handled_total{{{INSTANCE}}}[{RATE}]))",
                        "{{grpc_code}}",
                    ),
                ),
                "percentunit",
                "A refused CAS (FailedPrecondition) or pushback (ResourceExhausted) is an"
                " answer; Unknown, Internal, Unavailable and DeadlineExceeded are faults.",
                width=12,
            ),
            per_method(0.5),
            per_method(0.99),
            Panel(
                "Error ratio by method",
                (
                    (
                        "sum by (grpc_service, grpc_method) "
                        f'(rate(grpc_server_handled_total{{{INSTANCE}, grpc_code!="OK"}}[{RATE}]))'
                        " / sum by (grpc_service, grpc_method) "
                        f"(rate(grpc_server_handled_total{{{INSTANCE}}}[{RATE}]))",
                        "{{grpc_service}}/{{grpc_method}}",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "Calls in flight",
                ((f"sum by (instance) (accord_inflight_calls{{{INSTANCE}}})", "{{instance}}"),),
            ),
            Panel(
                "Messages/s",
                (
                    (
                        f"sum(rate(grpc_server_msg_received_total{{{INSTANCE}}}[{RATE}]))",
                        "received",
                    ),
                    (f"sum(rate(grpc_server_msg_sent_total{{{INSTANCE}}}[{RATE}]))", "sent"),
                    (
                        f"sum(rate(grpc_server_started_total{{{INSTANCE}}}[{RATE}]))",
                        "calls started",
                    ),
                ),
                "ops",
            ),
        ),
    ),
    (
        "Locks",
        (
            quantiles("accord_lock_wait_seconds", NS, "kind", "s", "Lock wait p50/p99 by kind", ""),
            Panel(
                "Grants/s by kind",
                (
                    (
                        f"sum by (kind) (rate(accord_lock_grants_total{{{NS}}}[{RATE}]))",
                        "{{kind}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Hand-offs and timeouts/s",
                (
                    (f"sum(rate(accord_lock_handoffs_total{{{NS}}}[{RATE}]))", "hand-offs"),
                    (f"sum(rate(accord_lock_timeouts_total{{{NS}}}[{RATE}]))", "timeouts"),
                ),
                "ops",
            ),
            Panel(
                "Deadlocks by policy",
                (
                    (
                        f"sum by (policy) (increase(accord_deadlocks_total{{{NS}}}[{RATE}]))",
                        "{{policy}}",
                    ),
                ),
                description="Cycles found and broken; `accord deadlocks ls` shows them.",
            ),
            Panel(
                "Fenced writes refused/s",
                (
                    (
                        f"sum by (namespace) (rate(accord_fence_rejections_total{{{NS}}}[{RATE}]))",
                        "{{namespace}}",
                    ),
                ),
                "ops",
                "Writes by a holder that had lost its lock. Many: leases too short for"
                " the work done under them.",
            ),
            Panel(
                "Leases granted and expired/s",
                (
                    (f"sum(rate(accord_leases_granted_total{{{NS}}}[{RATE}]))", "granted"),
                    (f"sum(rate(accord_leases_expired_total{{{NS}}}[{RATE}]))", "expired"),
                ),
                "ops",
            ),
        ),
    ),
    (
        "Sessions and streams",
        (
            Panel(
                "Sessions loaded",
                ((f"sum by (instance) (accord_sessions_loaded{{{INSTANCE}}})", "{{instance}}"),),
            ),
            quantiles(
                "accord_session_update_delivery_seconds",
                INSTANCE,
                "",
                "s",
                "Session update delivery p50/p99",
                "From an update's commit to its delivery to a subscriber.",
            ),
            Panel(
                "Streams open by kind",
                ((f"sum by (kind) (accord_streams_open{{{INSTANCE}}})", "{{kind}}"),),
            ),
        ),
    ),
    (
        "Votes",
        (
            Panel(
                "Votes open",
                (
                    (
                        # Each replica follows every open vote: one replica's figure.
                        f"max by (namespace) (accord_votes_open{{{NS}}})",
                        "{{namespace}}",
                    ),
                ),
                width=12,
            ),
            Panel(
                "Votes decided by outcome",
                (
                    (
                        f"sum by (outcome) (increase(accord_votes_decided_total{{{NS}}}[{RATE}]))",
                        "{{outcome}}",
                    ),
                ),
                width=12,
            ),
        ),
    ),
    (
        "Effect ledger",
        (
            Panel(
                "Begins by outcome",
                (
                    (
                        f"sum by (outcome) (rate(accord_effect_begins_total{{{NS}}}[{RATE}]))",
                        "{{outcome}}",
                    ),
                ),
                unit="ops",
                description="in_doubt: an effect whose executor's lease ended was found.",
            ),
            Panel(
                "Outcomes recorded by state",
                (
                    (
                        f"sum by (state) (rate(accord_effect_completes_total{{{NS}}}[{RATE}]))",
                        "{{state}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Claims aborted",
                ((f"sum(rate(accord_effect_aborts_total{{{NS}}}[{RATE}]))", "aborts"),),
                unit="ops",
            ),
        ),
    ),
    (
        "Storage: etcd and group commit",
        (
            Panel(
                "etcd reachable",
                ((f"min(accord_etcd_up{{{INSTANCE}}})", "etcd up (all replicas)"),),
                description="1 while every selected replica reaches etcd (and serves).",
                kind="stat",
                width=4,
            ),
            Panel(
                "etcd leader changes",
                (
                    (
                        f"max(increase(accord_etcd_leader_changes_total{{{INSTANCE}}}[$__range]))",
                        "in range",
                    ),
                ),
                kind="stat",
                width=4,
            ),
            quantiles(
                "accord_etcd_txn_seconds",
                INSTANCE,
                "",
                "s",
                "etcd transaction p50/p99",
                "",
            ),
            Panel(
                "Group-commit batch size",
                (
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(accord_group_commit_batch_size_bucket{{{INSTANCE}}}[{RATE}])))",
                        "p99",
                    ),
                    (
                        f"sum(rate(accord_group_commit_batch_size_sum{{{INSTANCE}}}[{RATE}]))"
                        " / sum(rate(accord_group_commit_batch_size_count"
                        f"{{{INSTANCE}}}[{RATE}]))",
                        "mean",
                    ),
                ),
                description="Writes sent to etcd in one transaction.",
            ),
            Panel(
                "Idempotent replays/s",
                (
                    (
                        "sum by (namespace) "
                        f"(rate(accord_idempotent_replays_total{{{NS}}}[{RATE}]))",
                        "{{namespace}}",
                    ),
                ),
                "ops",
                "Retried writes answered from their first answer's record.",
                width=8,
            ),
        ),
    ),
    (
        "Refusals",
        (
            Panel(
                "Auth refusals/s by code",
                (
                    (
                        f"sum by (code) (rate(accord_auth_refusals_total{{{INSTANCE}}}[{RATE}]))",
                        "{{code}}",
                    ),
                ),
                "ops",
                width=12,
            ),
            Panel(
                "Quota refusals/s by namespace and limit",
                (
                    (
                        "sum by (namespace, limit) "
                        f"(rate(accord_quota_refusals_total{{{NS}}}[{RATE}]))",
                        "{{namespace}} {{limit}}",
                    ),
                ),
                "ops",
                width=12,
            ),
        ),
    ),
)


def variable(name: str, label: str, query: str) -> dict[str, object]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, object]:
    options: dict[str, object] = (
        {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
        if panel.kind == "stat"
        else {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    )
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(panel.queries)
        ],
    }


def dashboard() -> dict[str, object]:
    panels: list[dict[str, object]] = []
    y = 0
    for title, row in ROWS:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x = 0
        for panel in row:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(panel_json(panel, len(panels) + 1, x, y))
            x += panel.width
        y += 8
    return {
        "uid": "accord-overview",
        "title": "Accord",
        "description": "Accord replicas: golden signals per gRPC method, locks, sessions,"
        " votes, etcd and refusals (README: Observability).",
        "tags": ["accord", "grpc", "etcd"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                variable("instance", "Replica", "label_values(accord_inflight_calls, instance)"),
                variable(
                    "namespace",
                    "Namespace",
                    'label_values({__name__=~"accord_.+", namespace!=""}, namespace)',
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
