from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from auth.app import create_app
from auth.settings import AuthSettings
from ticketing_common.testing import ServiceHarness, TestDatabase, test_settings
from ticketing_common.testing.plugin import NatsServer

MIGRATIONS = Path(__file__).parents[1] / "src" / "auth" / "migrations"


@pytest.fixture(scope="session")
async def auth_db(postgres_url: str) -> TestDatabase:
    return await TestDatabase.create(postgres_url, "auth", MIGRATIONS)


@pytest.fixture
async def settings(auth_db: TestDatabase, nats_server: NatsServer) -> AsyncIterator[AuthSettings]:
    # Cheap argon2 in tests only; production keeps the defaults.
    yield test_settings(
        AuthSettings,
        auth_db.url,
        nats_server.url,
        argon2_time_cost=1,
        argon2_memory_cost_kib=64,
        argon2_parallelism=1,
        signin_max_failures=3,
        signin_max_failures_per_client=8,
    )
    await auth_db.truncate()


@pytest.fixture
async def client(
    settings: AuthSettings, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    async with ServiceHarness(create_app(settings)).client() as client:
        yield client


ClientAt = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def client_at(settings: AuthSettings, jetstream: JetStreamContext) -> AsyncIterator[ClientAt]:
    """Clients of one running auth service, each connecting from the address given.

    The address is the ASGI peer: what the app sees as ``request.client`` once uvicorn has
    applied (or, for an untrusted peer, ignored) the proxy headers.
    """
    harness = ServiceHarness(create_app(settings))
    clients: list[httpx.AsyncClient] = []

    def at(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(
            app=harness.app, raise_app_exceptions=False, client=(address, 50000)
        )
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://testserver"))
        return clients[-1]

    async with harness.client():  # runs the app's lifespan
        yield at
        for client in clients:
            await client.aclose()
