"""Prod's NetworkPolicies allow exactly the connections the platform needs, and no other.

The policies are evaluated as Kubernetes does (a pod selected by no policy of a direction is
open in that direction; otherwise a connection needs a rule allowing it on both ends), over
the prod overlay's pods plus ingress-nginx and an intruder: any pod someone manages to start
in the namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import SERVICES, Overlay, render

NAMESPACE = "ticketing"
API_SERVICES = [s for s in SERVICES if s != "expiration"]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]

    @property
    def name(self) -> str:
        return self.labels["app.kubernetes.io/name"]


INGRESS_NGINX = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
INTRUDER = Pod(NAMESPACE, {"app.kubernetes.io/name": "intruder"})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert selector.keys() <= {"matchLabels"}, "only matchLabels is evaluated here"
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return wanted.items() <= labels.items()


def peer_matches(peer: dict[str, Any], policy_namespace: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        return False  # addresses outside the cluster, never a pod
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": pod.namespace}
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), pod.labels)


def port_matches(rule: dict[str, Any], port: int) -> bool:
    return "ports" not in rule or any(p["port"] == port for p in rule["ports"])


def allowed_by(
    policies: list[dict[str, Any]], pod: Pod, direction: str, other: Pod, port: int
) -> bool:
    """Whether ``pod``'s policies let it talk to (Egress) or hear from (Ingress) ``other``."""
    peers_field = "to" if direction == "Egress" else "from"
    relevant = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"], pod.labels)
        and direction in p["spec"]["policyTypes"]
    ]
    if not relevant:
        return True
    return any(
        port_matches(rule, port)
        and any(peer_matches(peer, p["metadata"]["namespace"], other) for peer in rule[peers_field])
        for p in relevant
        for rule in p["spec"].get(direction.lower(), [])
    )


def can_connect(overlay: Overlay, source: Pod, destination: Pod, port: int) -> bool:
    policies = overlay.all("NetworkPolicy")
    return allowed_by(policies, source, "Egress", destination, port) and allowed_by(
        policies, destination, "Ingress", source, port
    )


def pods(overlay: Overlay) -> dict[str, Pod]:
    found = {}
    for workload, template in overlay.pod_templates():
        pod = Pod(workload["metadata"]["namespace"], template["metadata"]["labels"])
        found[pod.name] = pod
    return found


def allowed_connections(overlay: Overlay) -> set[tuple[str, str, int]]:
    everyone = [*pods(overlay).values(), INGRESS_NGINX, INTRUDER]
    ports = {8000, 5432, 4222, 6222}
    return {
        (source.name, destination.name, port)
        for source in everyone
        for destination in everyone
        for port in ports
        if source.namespace == NAMESPACE or destination.namespace == NAMESPACE
        if can_connect(overlay, source, destination, port)
    }


def test_prod_allows_exactly_the_connections_the_platform_needs() -> None:
    expected = {
        *(("ingress-nginx", name, 8000) for name in [*API_SERVICES, "client"]),
        *(("client", name, 8000) for name in API_SERVICES),
        *((name, f"{name}-postgres", 5432) for name in SERVICES),
        *((name, "nats", 4222) for name in SERVICES),
        ("nats", "nats", 6222),
    }
    assert allowed_connections(render("prod")) == expected


@pytest.mark.parametrize("target", ["auth-postgres", "nats", "orders", "expiration"])
def test_an_intruder_in_the_namespace_reaches_nothing(target: str) -> None:
    prod = render("prod")
    destination = pods(prod)[target]
    for port in (8000, 5432, 4222, 6222):
        assert not can_connect(prod, INTRUDER, destination, port)


def test_the_evaluation_sees_an_open_door() -> None:
    # Without its policies, prod would let the intruder in: the checks above are not vacuous.
    prod = render("prod")
    open_prod = Overlay(
        prod.name,
        prod.path,
        prod.text,
        [d for d in prod.documents if d["kind"] != "NetworkPolicy"],
    )
    assert can_connect(open_prod, INTRUDER, pods(prod)["auth-postgres"], 5432)
