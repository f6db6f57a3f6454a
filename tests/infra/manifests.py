"""Every overlay rendered once per session, offline, as ``kubectl kustomize`` renders it.

The checks in this folder look at what a cluster would receive, not at the files it is
assembled from: a patch that misses its target or a generator that is not wired in shows up.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("dev", "prod")


def tool(name: str) -> str:
    """A command ``make install`` installed: a dev dependency in the project's environment, or
    a tool in an environment of its own under ``.tools/`` (checkov, see ``tools/checkov/``)."""
    paths = (Path(sys.executable).parent / name, ROOT / ".tools" / name / "bin" / name)
    found = next((str(p) for p in paths if p.exists()), None) or shutil.which(name)
    assert found, f"{name} is missing: run `make install`"
    return found


def has_database(service: str) -> bool:
    return (ROOT / service / "src" / service / "migrations" / "env.py").exists()


# The five services and the web client, as the manifests name their Deployments.
SERVICES = ("auth", "tickets", "orders", "expiration", "payments")
WORKLOADS = (*SERVICES, "client")


@dataclass(frozen=True)
class Overlay:
    name: str
    path: Path
    text: str
    documents: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    def find(self, kind: str, name: str) -> dict[str, Any]:
        """The one ``kind`` called ``name`` (for a generated one, before its hash suffix)."""
        generated = kind in {"ConfigMap", "Secret"}
        found = [
            d
            for d in self.all(kind)
            if (unhashed(d["metadata"]["name"]) if generated else d["metadata"]["name"]) == name
        ]
        assert len(found) == 1, f"expected one {kind} {name!r} in {self.name}, found {len(found)}"
        return found[0]

    def pod_templates(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, pod template) for every Deployment and StatefulSet."""
        for workload in self.documents:
            if workload["kind"] in {"Deployment", "StatefulSet"}:
                yield workload, workload["spec"]["template"]


def all_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def unhashed(name: str) -> str:
    """A generated ConfigMap's or Secret's name ends in a hash of its content: drop it."""
    return name.rsplit("-", 1)[0] if re.fullmatch(r".+-[a-z0-9]{10}", name) else name


@functools.cache
def render(name: str) -> Overlay:
    path = K8S / "overlays" / name
    text = subprocess.run(
        [tool("kubectl"), "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return Overlay(name, path, text, [d for d in yaml.safe_load_all(text) if d])
