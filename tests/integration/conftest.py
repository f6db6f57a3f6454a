"""Several services in one test process, each with its own database, on one real NATS server.

``platform.start("orders")`` runs a service with its real lifespan (relay and consumer) and
returns an HTTP client to it; ``platform.stop("orders")`` shuts it down gracefully (a stopped
service, as in an outage or a deploy), and ``start`` again brings it back on the same database.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from ticketing_common.settings import ServiceSettings
from ticketing_common.testing import ServiceHarness, TestDatabase, session_cookie, test_settings
from ticketing_common.testing.plugin import NatsServer

SERVICES = ("auth", "tickets", "orders", "expiration", "payments")
ROOT = Path(__file__).parents[2]


def _settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{name}.settings")
    cls: type[ServiceSettings] = getattr(module, f"{name.capitalize()}Settings")
    return cls


class Platform:
    def __init__(
        self, postgres_url: str, nats_url: str, nats_passwords: dict[str, str] | None = None
    ) -> None:
        self._postgres_url = postgres_url
        self._nats_url = nats_url
        # On a secured server, each service connects as its own user.
        self._nats_passwords = nats_passwords
        self.databases: dict[str, TestDatabase] = {}
        self.settings: dict[str, ServiceSettings] = {}
        self._running: dict[str, contextlib.AsyncExitStack] = {}

    async def start(self, name: str, **overrides: Any) -> httpx.AsyncClient:
        assert name in SERVICES and name not in self._running
        if name not in self.databases:
            self.databases[name] = await TestDatabase.create(
                self._postgres_url, name, ROOT / name / "src" / name / "migrations"
            )
        if self._nats_passwords is not None:
            overrides = {
                "nats_user": name,
                "nats_password": self._nats_passwords[name],
                **overrides,
            }
        settings = test_settings(
            _settings_class(name), self.databases[name].url, self._nats_url, **overrides
        )
        self.settings[name] = settings
        app = importlib.import_module(f"{name}.app").create_app(settings)
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(ServiceHarness(app).client())
        self._running[name] = stack
        return client

    async def stop(self, name: str) -> None:
        await self._running.pop(name).aclose()

    def cookie(self, **kwargs: Any) -> dict[str, str]:
        """A signed-in user's cookies, valid for every service (they share the JWT key)."""
        return session_cookie(next(iter(self.settings.values())), **kwargs)

    async def close(self) -> None:
        for name in list(self._running):
            await self.stop(name)


@pytest.fixture
async def platform(
    postgres_url: str, nats_server: NatsServer, jetstream: JetStreamContext
) -> AsyncIterator[Platform]:
    platform = Platform(postgres_url, nats_server.url)
    try:
        yield platform
    finally:
        await platform.close()
