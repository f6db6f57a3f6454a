"""The edge's path routing table, read from ``infra/routes.json``.

The table exists once: the local edge routes by it and a test checks the Kubernetes Ingress
against it, so local mode and the cluster cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# local/src/ticketing_local/routing.py -> the repository root. Local mode runs from a checkout.
REPO_ROOT = Path(__file__).resolve().parents[3]
ROUTES_FILE = REPO_ROOT / "infra" / "routes.json"


@dataclass(frozen=True)
class Route:
    prefix: str
    service: str

    def matches(self, path: str) -> bool:
        # Element-wise, like the Ingress's pathType Prefix: /api/users matches /api/users and
        # /api/users/signup, never /api/usersx.
        prefix = self.prefix.rstrip("/")
        return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class RoutingTable:
    routes: tuple[Route, ...]

    @classmethod
    def load(cls, path: Path = ROUTES_FILE) -> RoutingTable:
        document = json.loads(path.read_text())
        routes = tuple(Route(r["prefix"], r["service"]) for r in document["routes"])
        return cls(routes)

    def match(self, path: str) -> Route | None:
        """The route with the longest prefix matching ``path``."""
        candidates = [r for r in self.routes if r.matches(path)]
        return max(candidates, key=lambda r: len(r.prefix), default=None)
