from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from expiration.app import create_app
from expiration.settings import ExpirationSettings
from ticketing_common.testing import ServiceHarness, TestDatabase, test_settings
from ticketing_common.testing.plugin import NatsServer

MIGRATIONS = Path(__file__).parents[1] / "src" / "expiration" / "migrations"


@pytest.fixture(scope="session")
async def expiration_db(postgres_url: str) -> TestDatabase:
    return await TestDatabase.create(postgres_url, "expiration", MIGRATIONS)


@pytest.fixture
async def settings(
    expiration_db: TestDatabase, nats_server: NatsServer
) -> AsyncIterator[ExpirationSettings]:
    yield test_settings(ExpirationSettings, expiration_db.url, nats_server.url)
    await expiration_db.truncate()


@pytest.fixture
def harness(settings: ExpirationSettings, jetstream: JetStreamContext) -> ServiceHarness:
    return ServiceHarness(create_app(settings))


@pytest.fixture
async def client(harness: ServiceHarness) -> AsyncIterator[httpx.AsyncClient]:
    async with harness.client() as client:
        yield client
