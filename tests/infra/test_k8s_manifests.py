"""The Kubernetes manifests agree with the code: routes, images, probes, settings, secrets.

No cluster needed: the YAML is parsed and checked against the routing table
(infra/routes.json, which the local edge routes by), the workspace's services and skaffold.yaml.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
K8S = ROOT / "infra" / "k8s"
NOT_SERVICES = {"common", "local", "chaos"}
# After a 5s preStop pause: in-flight requests (20s, ticketing_common.cli), the event in hand
# (ack_wait/2, payments 30s), the outbox flush (5s) and the NATS drain (5s).
MIN_GRACE_SECONDS = 5 + 20 + 30 + 5 + 5


def load_manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


MANIFESTS = load_manifests()


def find(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in MANIFESTS if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name!r} in infra/k8s, found {len(found)}"
    return found[0]


def workspace_services() -> list[str]:
    members = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"][
        "members"
    ]
    return [m for m in members if m not in NOT_SERVICES]


def has_database(service: str) -> bool:
    return (ROOT / service / "src" / service / "migrations" / "env.py").exists()


SERVICES = workspace_services()


def env_sources(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Variable -> (secret name, key) for the container's variables taken from Secrets."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def all_containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def test_the_ingress_routes_exactly_by_the_routing_table() -> None:
    table = json.loads((ROOT / "infra" / "routes.json").read_text())["routes"]
    ingress = find("Ingress", "ticketing")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ticketing.com"
    paths = [
        {
            "prefix": p["path"],
            "service": p["backend"]["service"]["name"],
            "pathType": p["pathType"],
        }
        for p in rule["http"]["paths"]
    ]
    assert paths == [r | {"pathType": "Prefix"} for r in table]
    assert ingress["spec"]["tls"][0]["hosts"] == ["ticketing.com"]


@pytest.mark.parametrize(
    "backend",
    json.loads((ROOT / "infra" / "routes.json").read_text())["routes"],
    ids=lambda r: r["prefix"],
)
def test_every_routed_service_that_exists_has_a_matching_service(backend: dict[str, str]) -> None:
    name = backend["service"]
    if name not in SERVICES:
        pytest.skip(f"{name} is not in the workspace yet")
    ingress = find("Ingress", "ticketing")
    ingress_port = next(
        p["backend"]["service"]["port"]["number"]
        for p in ingress["spec"]["rules"][0]["http"]["paths"]
        if p["backend"]["service"]["name"] == name
    )
    service = find("Service", name)
    (port,) = service["spec"]["ports"]
    assert port["port"] == ingress_port
    pod = find("Deployment", name)["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container_ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert port["targetPort"] in container_ports


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_deployment_is_production_ready(name: str) -> None:
    deployment = find("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["terminationGracePeriodSeconds"] >= MIN_GRACE_SECONDS
    (container,) = pod["containers"]
    assert container["image"] == f"ticketing/{name}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][0] == "serve"
    for c in all_containers(pod):
        assert {"requests", "limits"} <= c["resources"].keys(), c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]
        assert {"configMapRef": {"name": "ticketing-config"}} in c["envFrom"], c["name"]
        assert env_sources(c)["JWT_KEY"] == ("jwt-secret", "JWT_KEY"), c["name"]
    if has_database(name):
        (migrate,) = pod["initContainers"]
        assert migrate["image"] == container["image"]
        assert migrate["args"] == ["migrate"]
        for c in all_containers(pod):
            assert env_sources(c)["DATABASE_URL"] == (f"{name}-db-secret", "DATABASE_URL")


def test_the_shared_settings_are_the_production_ones() -> None:
    config = find("ConfigMap", "ticketing-config")["data"]
    assert config["ENVIRONMENT"] == "production"
    assert config["COOKIE_SECURE"] == "true"
    host, port = re.fullmatch(r"nats://([\w-]+):(\d+)", config["NATS_URL"]).groups()  # type: ignore[union-attr]
    assert int(port) in [p["port"] for p in find("Service", host)["spec"]["ports"]]


@pytest.mark.parametrize("name", [s for s in SERVICES if has_database(s)])
def test_each_service_with_a_database_has_its_own_postgres(name: str) -> None:
    statefulset = find("StatefulSet", f"{name}-postgres")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert env_sources(container)["POSTGRES_PASSWORD"] == (f"{name}-db-secret", "POSTGRES_PASSWORD")
    assert statefulset["spec"]["volumeClaimTemplates"], "PostgreSQL data must be on a volume"
    service = find("Service", f"{name}-postgres")
    assert service["spec"]["selector"].items() <= (
        statefulset["spec"]["template"]["metadata"]["labels"].items()
    )


def test_nats_is_a_three_node_jetstream_cluster_of_2_12_or_newer() -> None:
    statefulset = find("StatefulSet", "nats")
    assert statefulset["spec"]["replicas"] == 3
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    major, minor = map(int, re.match(r"nats:(\d+)\.(\d+)", container["image"]).groups())  # type: ignore[union-attr]
    assert (major, minor) >= (2, 12)
    config = find("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "jetstream" in config
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", config)
    assert routes == ["nats-0", "nats-1", "nats-2"]
    assert find("Service", "nats-headless")["spec"]["clusterIP"] == "None"


def test_skaffold_builds_every_deployed_image_from_the_one_dockerfile() -> None:
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    artifacts = {
        a["image"]: a["docker"]["buildArgs"]["SERVICE"] for a in skaffold["build"]["artifacts"]
    }
    assert {a["docker"]["dockerfile"] for a in skaffold["build"]["artifacts"]} == {"Dockerfile"}
    deployed = {
        c["image"]
        for m in MANIFESTS
        if m["kind"] == "Deployment"
        for c in all_containers(m["spec"]["template"]["spec"])
    }
    assert deployed == set(artifacts)
    assert artifacts == {f"ticketing/{s}": s for s in SERVICES}
    assert skaffold["manifests"]["rawYaml"] == ["infra/k8s/*.yaml"]
    assert "ARG SERVICE" in (ROOT / "Dockerfile").read_text()
