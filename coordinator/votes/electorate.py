"""A label electorate: the agents whose live leases carry a selector's labels, weighted.

With auth off every such agent counts, with weight 1. With auth required an agent
counts only through a lease whose principal holds every selecting label by an admin's
grant (a label written on a lease is a claim, not a grant), and weighs what those grants
carry: the smallest weight among the selecting labels' grants (a label granted without
a weight carries 1), so one heavier label cannot lift an agent above a lighter one it
also needs. An agent counted through several leases of different principals weighs the
smallest of their weights.

Error handling: none here; an empty electorate is the caller's to refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from accord.v1 import auth_pb2, leases_pb2, votes_pb2

# (principal, namespace) -> the labels an admin granted it there, with their weights.
GrantedLabels = Callable[[str, str], auth_pb2.LabelSet]


def _carries(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _weight(
    info: leases_pb2.LeaseInfo, selector: Mapping[str, str], granted: GrantedLabels, namespace: str
) -> float | None:
    """The weight the lease lends its agent; None when it does not count."""
    if not info.principal:
        return None
    held = granted(info.principal, namespace)
    if not _carries(held.labels, selector):
        return None
    return min((held.weights.get(k, 1.0) for k in selector), default=1.0)


def label_voters(
    leases: Iterable[leases_pb2.LeaseInfo],
    selector: Mapping[str, str],
    namespace: str,
    granted: GrantedLabels | None,
) -> list[votes_pb2.Voter]:
    """The electorate, sorted by agent id (granted None: auth off)."""
    weights: dict[str, float] = {}
    for info in leases:
        if not info.agent_id or not _carries(info.labels, selector):
            continue
        weight = 1.0 if granted is None else _weight(info, selector, granted, namespace)
        if weight is not None:
            weights[info.agent_id] = min(weight, weights.get(info.agent_id, weight))
    return [votes_pb2.Voter(agent_id=a, weight=w) for a, w in sorted(weights.items())]
