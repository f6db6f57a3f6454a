from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from ticketing_common.testing import ServiceHarness, TestDatabase, Users, test_settings
from ticketing_common.testing.plugin import NatsServer
from tickets.app import create_app
from tickets.settings import TicketsSettings

MIGRATIONS = Path(__file__).parents[1] / "src" / "tickets" / "migrations"


@pytest.fixture(scope="session")
async def tickets_db(postgres_url: str) -> TestDatabase:
    return await TestDatabase.create(postgres_url, "tickets", MIGRATIONS)


@pytest.fixture
async def settings(
    tickets_db: TestDatabase, nats_server: NatsServer
) -> AsyncIterator[TicketsSettings]:
    yield test_settings(TicketsSettings, tickets_db.url, nats_server.url)
    await tickets_db.truncate()


@pytest.fixture
async def client(
    settings: TicketsSettings, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    async with ServiceHarness(create_app(settings)).client() as client:
        yield client


@pytest.fixture
def users(settings: TicketsSettings) -> Users:
    return Users(settings)
