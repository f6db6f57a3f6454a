from __future__ import annotations

from collections.abc import AsyncIterator
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
    )
    await auth_db.truncate()


@pytest.fixture
async def client(
    settings: AuthSettings, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    async with ServiceHarness(create_app(settings)).client() as client:
        yield client
