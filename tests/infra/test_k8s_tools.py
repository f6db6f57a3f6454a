"""The deployment files pass the tools that know their formats, offline.

Structure checks miss what only a schema knows: a misspelled field or a string where a number
belongs. So every rendered overlay goes through kubernetes-validate (strict, against the
oldest Kubernetes we support and the newest schema it ships) and checkov; the Dockerfile
through hadolint; the NATS configuration through nats-server itself; skaffold.yaml through
skaffold's published schema (vendored in schemas/).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from .conftest import OVERLAYS, ROOT, SERVICES, render, tool

# preStop.sleep (the services' graceful shutdown) is Kubernetes 1.30 and newer: the floor.
OLDEST_KUBERNETES = "1.30.0"
# Skaffold's published JSON schema for the apiVersion skaffold.yaml uses (from skaffold's
# repository, docs-v2/content/en/schemas/v4beta13.json), kept here so the check runs offline.
SKAFFOLD_SCHEMA = Path(__file__).parent / "schemas" / "skaffold-v4beta13.json"

# checkov's findings we accept, and why. Everything else fails the build.
CHECKOV_SKIPS = {
    # A CPU limit throttles a pod even on an idle node; requests and the autoscalers size them.
    "CKV_K8S_11": "CPU limits",
    # Our images are tagged and pinned by digest by skaffold at deploy time (skaffold.yaml);
    # third-party images are pinned to a full version (test_k8s_manifests).
    "CKV_K8S_14": "image tag in the manifests",
    "CKV_K8S_43": "image digest in the manifests",
    # With immutable tags and digests, IfNotPresent is correct and avoids a registry round trip.
    "CKV_K8S_15": "imagePullPolicy Always",
    # The settings are read from the environment (pydantic-settings), the twelve-factor way.
    "CKV_K8S_35": "secrets as files",
    # PostgreSQL and NATS run as their images' own unprivileged users (uid 70 and 1000).
    "CKV_K8S_40": "uid above 10000",
}
CHECKOV_DEV_SKIPS = {
    # File sync copies changed sources into the running container (dev only).
    "CKV_K8S_22": "read-only root filesystem",
    # The NetworkPolicies are prod's: a local cluster's ingress controller may live anywhere.
    "CKV2_K8S_6": "NetworkPolicy for every pod",
}
# Placeholders for the passwords nats-server reads from its environment.
NATS_PASSWORD_VARIABLES = {f"NATS_PASSWORD_{s.upper()}": f"test-{s}" for s in SERVICES}


def run(*command: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def kubernetes_validate(path: Path, version: str) -> None:
    run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(path))


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, latest_version()])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_is_valid_kubernetes(
    rendered_files: dict[str, Path], overlay: str, version: str
) -> None:
    kubernetes_validate(rendered_files[overlay], version)


def test_the_readmes_state_the_kubernetes_floor_that_is_checked() -> None:
    floor = OLDEST_KUBERNETES.rsplit(".", 1)[0]
    for readme in (ROOT / "README.md", ROOT / "infra" / "k8s" / "README.md"):
        assert f"Kubernetes {floor} or newer" in readme.read_text().replace("**", ""), readme


@pytest.mark.parametrize(
    ("correct", "mistake"),
    [
        ("allowPrivilegeEscalation", "allowPrivilegeEscalaton"),
        ("periodSeconds: 2", 'periodSeconds: "2"'),
    ],
)
def test_strict_validation_catches_what_structure_checks_miss(
    tmp_path: Path, correct: str, mistake: str
) -> None:
    text = render("dev").text
    assert correct in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace(correct, mistake, 1))
    with pytest.raises(AssertionError, match="did not validate"):
        kubernetes_validate(broken, OLDEST_KUBERNETES)


@functools.cache
def checkov_failures(path: Path) -> list[dict[str, Any]]:
    """checkov's failed checks on one rendered overlay (it takes seconds: run once)."""
    result = subprocess.run(
        [
            tool("checkov"),
            "--skip-download",
            "--quiet",
            "--compact",
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--file",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        # Offline: no check for a newer checkov, no mapping download.
        env=os.environ | {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "true"},
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0, "checkov checked nothing"
    failed: list[dict[str, Any]] = report["results"]["failed_checks"]
    return failed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_finds_nothing_outside_the_justified_skips(
    rendered_files: dict[str, Path], overlay: str
) -> None:
    skips = CHECKOV_SKIPS | (CHECKOV_DEV_SKIPS if overlay == "dev" else {})
    unexpected = sorted(
        f"{f['check_id']} {f['check_name']}: {f['resource']}"
        for f in checkov_failures(rendered_files[overlay])
        if f["check_id"] not in skips
    )
    assert unexpected == []


def test_the_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint"), "--failure-threshold", "info", "Dockerfile")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_server_accepts_the_rendered_configuration(overlay: str, tmp_path: Path) -> None:
    config = next(
        d
        for d in render(overlay).all("ConfigMap")
        if d["metadata"]["name"].startswith("nats-config")
    )
    for name, content in config["data"].items():
        (tmp_path / name).write_text(content)
    # The StatefulSet mounts the ConfigMap at /etc/nats and passes this file.
    (statefulset,) = [
        s for s in render(overlay).all("StatefulSet") if s["metadata"]["name"] == "nats"
    ]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--config", "/etc/nats/nats.conf"]
    env = os.environ | {"POD_NAME": "nats-0"} | NATS_PASSWORD_VARIABLES
    run(tool("nats-server"), "-t", "-c", str(tmp_path / "nats.conf"), cwd=tmp_path, env=env)


def skaffold_errors(document: Any) -> list[str]:
    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [error.message for error in validator.iter_errors(document)]


def test_skaffold_yaml_matches_its_published_schema() -> None:
    document = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert document["apiVersion"] == f"skaffold/{SKAFFOLD_SCHEMA.stem.removeprefix('skaffold-')}"
    assert skaffold_errors(document) == []
    # The schema refuses unknown fields, so a misspelling fails here too.
    document["build"]["artifacts"][0]["docker"]["targt"] = "dev"
    assert skaffold_errors(document)
