from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from orders.app import create_app
from orders.settings import OrdersSettings
from ticketing_common.events import TicketCreated
from ticketing_common.testing import ServiceHarness, TestDatabase, Users, send_event, test_settings
from ticketing_common.testing.plugin import NatsServer

MIGRATIONS = Path(__file__).parents[1] / "src" / "orders" / "migrations"


@pytest.fixture(scope="session")
async def orders_db(postgres_url: str) -> TestDatabase:
    return await TestDatabase.create(postgres_url, "orders", MIGRATIONS)


@pytest.fixture
async def settings(
    orders_db: TestDatabase, nats_server: NatsServer
) -> AsyncIterator[OrdersSettings]:
    yield test_settings(OrdersSettings, orders_db.url, nats_server.url)
    await orders_db.truncate()


@pytest.fixture
async def client(
    settings: OrdersSettings, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    async with ServiceHarness(create_app(settings)).client() as client:
        yield client


@pytest.fixture
def users(settings: OrdersSettings) -> Users:
    return Users(settings)


class Tickets:
    """Tickets as the tickets service announces them, landed in our replica."""

    def __init__(self, js: JetStreamContext, db: TestDatabase) -> None:
        self._js = js
        self._db = db

    async def create(
        self, owner: uuid.UUID | None = None, title: str = "Show", price: str = "30.00"
    ) -> TicketCreated:
        event = TicketCreated(
            id=uuid.uuid4(),
            version=0,
            title=title,
            price=Decimal(price),
            user_id=owner or uuid.uuid4(),
        )
        await self.announce(event)
        return event

    async def announce(self, event: TicketCreated) -> None:
        await self._db.wait_handled((await send_event(self._js, event)).id)


@pytest.fixture
def tickets(
    jetstream: JetStreamContext, orders_db: TestDatabase, client: httpx.AsyncClient
) -> Tickets:
    return Tickets(jetstream, orders_db)
