from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from orders.app import create_app
from orders.settings import OrdersSettings
from ticketing_common.auth import SESSION_COOKIE
from ticketing_common.events import Event, EventEnvelope, TicketCreated
from ticketing_common.testing import ServiceHarness, TestDatabase, session_cookie, test_settings
from ticketing_common.testing.helpers import eventually
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


class Users:
    """Signed-in users: ``users.headers(user_id)`` are the headers of that user's requests."""

    def __init__(self, settings: OrdersSettings) -> None:
        self._settings = settings

    def headers(self, user_id: uuid.UUID) -> dict[str, str]:
        token = session_cookie(self._settings, user_id)[SESSION_COOKIE]
        return {"Cookie": f"{SESSION_COOKIE}={token}"}


@pytest.fixture
def users(settings: OrdersSettings) -> Users:
    return Users(settings)


async def send_event(
    js: JetStreamContext, event: Event, envelope_id: uuid.UUID | None = None
) -> EventEnvelope:
    """Publish an event as another service's relay would (envelope id = Nats-Msg-Id)."""
    envelope = EventEnvelope.wrap(event)
    if envelope_id is not None:
        envelope = envelope.model_copy(update={"id": envelope_id})
    await js.publish(
        envelope.subject.value,
        json.dumps(envelope.model_dump(mode="json", by_alias=True)).encode(),
        headers={"Nats-Msg-Id": str(envelope.id)},
    )
    return envelope


async def handled(db: TestDatabase, event_id: uuid.UUID) -> None:
    """Wait until the consumer has committed the event (its id is in the inbox)."""

    async def in_inbox() -> bool:
        return bool(await db.fetch("SELECT 1 FROM inbox WHERE event_id = $1", event_id))

    await eventually(in_inbox)


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
        await handled(self._db, (await send_event(self._js, event)).id)


@pytest.fixture
def tickets(
    jetstream: JetStreamContext, orders_db: TestDatabase, client: httpx.AsyncClient
) -> Tickets:
    return Tickets(jetstream, orders_db)
