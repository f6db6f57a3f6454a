from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from payments.app import create_app
from payments.providers import SandboxProvider
from payments.settings import PaymentsSettings
from ticketing_common.events import (
    Event,
    EventEnvelope,
    OrderCancelled,
    OrderCancelledTicket,
    OrderCreated,
    OrderCreatedTicket,
    OrderStatus,
)
from ticketing_common.messaging import ensure_stream
from ticketing_common.testing import (
    ServiceHarness,
    TestDatabase,
    send_event,
    session_cookie,
    test_settings,
)
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import NatsServer

MIGRATIONS = Path(__file__).parents[1] / "src" / "payments" / "migrations"


@pytest.fixture(scope="session")
async def payments_db(postgres_url: str) -> TestDatabase:
    return await TestDatabase.create(postgres_url, "payments", MIGRATIONS)


@pytest.fixture
async def settings(
    payments_db: TestDatabase, nats_server: NatsServer
) -> AsyncIterator[PaymentsSettings]:
    yield test_settings(PaymentsSettings, payments_db.url, nats_server.url)
    await payments_db.truncate()


@pytest.fixture
def provider() -> SandboxProvider:
    return SandboxProvider()


@pytest.fixture
async def client(
    settings: PaymentsSettings, provider: SandboxProvider, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    async with ServiceHarness(create_app(settings, provider)).client() as client:
        yield client


class Orders:
    """Plays the orders service: publishes its events to the stream, waits for the replica."""

    def __init__(self, js: JetStreamContext, db: TestDatabase, settings: PaymentsSettings) -> None:
        self.js = js
        self.db = db
        self.settings = settings

    async def emit(self, event: Event) -> EventEnvelope:
        await ensure_stream(self.js)
        return await send_event(self.js, event)

    async def replica_status(self, order_id: uuid.UUID) -> str | None:
        rows = await self.db.fetch("SELECT status FROM orders WHERE id = $1", order_id)
        return rows[0]["status"] if rows else None

    async def create(
        self,
        *,
        user_id: uuid.UUID | None = None,
        price: str = "12.50",
        expires_in: float = 900,
        wait: bool = True,
    ) -> tuple[uuid.UUID, dict[str, str]]:
        """A new order (replicated unless ``wait`` is False) and its owner's cookies."""
        user_id = user_id or uuid.uuid4()
        order_id = uuid.uuid4()
        await self.emit(
            OrderCreated(
                id=order_id,
                version=0,
                status=OrderStatus.CREATED,
                user_id=user_id,
                expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
                ticket=OrderCreatedTicket(id=uuid.uuid4(), price=Decimal(price)),
            )
        )
        if wait:
            await eventually(lambda: self.replica_status(order_id))
        return order_id, session_cookie(self.settings, user_id)

    async def cancel(self, order_id: uuid.UUID, *, wait: bool = True) -> None:
        await self.emit(
            OrderCancelled(id=order_id, version=1, ticket=OrderCancelledTicket(id=uuid.uuid4()))
        )
        if wait:
            await eventually(lambda: self.is_cancelled(order_id))

    async def is_cancelled(self, order_id: uuid.UUID) -> bool:
        return await self.replica_status(order_id) == OrderStatus.CANCELLED

    async def payments(self, order_id: uuid.UUID) -> list[dict[str, object]]:
        rows = await self.db.fetch("SELECT * FROM payments WHERE order_id = $1", order_id)
        return [dict(r) for r in rows]


@pytest.fixture
def orders(
    jetstream: JetStreamContext, payments_db: TestDatabase, settings: PaymentsSettings
) -> Orders:
    return Orders(jetstream, payments_db, settings)
