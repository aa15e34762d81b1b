"""A small evaluator of Kubernetes NetworkPolicies (networking.k8s.io/v1) for the deployment tests.

It answers "may endpoint A open a connection to endpoint B on port P?" the way the API defines it: a
pod selected by any policy of type Egress (Ingress) is isolated in that direction, and then a flow must
match a rule of one of the policies selecting it; a pod no policy selects is open. A flow needs both the
source's egress and the destination's ingress. Policies select pods of their own namespace only; peers
match by podSelector (the policy's namespace), namespaceSelector (+ podSelector), or ipBlock (any
endpoint with an address in the block, pods included, as most network plugins do). Named ports are
resolved against the destination's container ports.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels, namespace) or an address outside the cluster's pods (``pod=False``)."""

    name: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    ip: str = "10.244.0.10"
    ports: dict[str, int] = field(default_factory=dict, hash=False, compare=False)  # named ports
    pod: bool = True

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions); an empty one selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_ns: str, ep: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        addr = ipaddress.ip_address(ep.ip)
        if addr not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(addr in ipaddress.ip_network(x) for x in block.get("except") or [])
    if not ep.pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ep.namespace_labels):
            return False
    elif ep.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], ep.labels)


def _peers_match(peers: list[dict[str, Any]] | None, policy_ns: str, ep: Endpoint) -> bool:
    """A rule without peers matches every endpoint, in and outside the cluster."""
    return not peers or any(_peer_matches(peer, policy_ns, ep) for peer in peers)


def _port_matches(ports: list[dict[str, Any]] | None, dst: Endpoint, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        want = p["port"]
        if isinstance(want, str):
            want = dst.ports.get(want, -1)
        if want == port or (p.get("endPort") is not None and want <= port <= p["endPort"]):
            return True
    return False


def _selecting(policies: list[dict[str, Any]], ep: Endpoint, direction: str) -> list[dict[str, Any]]:
    if not ep.pod:
        return []
    out = []
    for pol in policies:
        spec = pol["spec"]
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        if (
            direction in types
            and pol["metadata"].get("namespace", "") == ep.namespace
            and selects(spec.get("podSelector"), ep.labels)
        ):
            out.append(pol)
    return out


def allowed(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``src`` may connect to ``dst`` on ``port``/``protocol`` under ``policies``."""
    egress = _selecting(policies, src, "Egress")
    if egress and not any(
        _peers_match(rule.get("to"), pol["metadata"].get("namespace", ""), dst)
        and _port_matches(rule.get("ports"), dst, port, protocol)
        for pol in egress
        for rule in pol["spec"].get("egress") or []
    ):
        return False
    ingress = _selecting(policies, dst, "Ingress")
    return not ingress or any(
        _peers_match(rule.get("from"), pol["metadata"].get("namespace", ""), src)
        and _port_matches(rule.get("ports"), dst, port, protocol)
        for pol in ingress
        for rule in pol["spec"].get("ingress") or []
    )
