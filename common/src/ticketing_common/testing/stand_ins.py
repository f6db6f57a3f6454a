"""Stand-ins for what a test does not run: the services a service under test hears from (each
publishes that service's events to the stream, as its relay would, and waits until the service
under test has them), and a service's own state, for the tests of the common machinery."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from nats.js import JetStreamContext
from sqlalchemy import Column, Integer, Table, Text

from ticketing_common.db import make_metadata
from ticketing_common.events import (
    Event,
    EventEnvelope,
    OrderCancelled,
    OrderCancelledTicket,
    OrderCreated,
    OrderCreatedTicket,
    OrderStatus,
    TicketCreated,
)
from ticketing_common.messaging.streams import ensure_stream
from ticketing_common.settings import ServiceSettings
from ticketing_common.testing.helpers import TestDatabase, eventually, send_event, session_cookie

# A service's own state, for the common machinery's tests: one row per handled effect.
effects_metadata = make_metadata()
effects = Table(
    "effects",
    effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("note", Text, nullable=False),
)


class TicketsStandIn:
    """The tickets service, as the orders service hears it: tickets landed in the replica."""

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


class OrdersStandIn:
    """The orders service, as the payments service hears it: orders landed in the replica."""

    def __init__(self, js: JetStreamContext, db: TestDatabase, settings: ServiceSettings) -> None:
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
        order = self.new_order(user_id=user_id, price=price, expires_in=expires_in)
        await self.emit(order)
        if wait:
            await eventually(lambda: self.replica_status(order.id))
        return order.id, session_cookie(self.settings, user_id)

    @staticmethod
    def new_order(
        *,
        order_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        price: str = "12.50",
        expires_in: float = 900,
    ) -> OrderCreated:
        """An order.created as orders would publish it, for a ticket of its own."""
        return OrderCreated(
            id=order_id or uuid.uuid4(),
            version=0,
            status=OrderStatus.CREATED,
            user_id=user_id or uuid.uuid4(),
            expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
            ticket=OrderCreatedTicket(id=uuid.uuid4(), price=Decimal(price)),
        )

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
