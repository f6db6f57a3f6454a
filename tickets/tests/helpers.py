"""What the tickets tests do again and again: list a ticket, and play the orders service."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from nats.js import JetStreamContext

from ticketing_common.events import (
    OrderCancelled,
    OrderCancelledTicket,
    OrderCreated,
    OrderCreatedTicket,
    OrderStatus,
)
from ticketing_common.testing import Users, send_event
from ticketing_common.testing.helpers import eventually


async def create(
    client: httpx.AsyncClient,
    users: Users,
    owner: uuid.UUID | None = None,
    title: str = "Concert",
    price: Any = "20",
) -> dict[str, Any]:
    """A ticket listed through the API by ``owner`` (a new user unless given)."""
    r = await client.post(
        "/api/tickets",
        json={"title": title, "price": price},
        headers=users.headers(owner or uuid.uuid4()),
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def update(
    client: httpx.AsyncClient,
    users: Users,
    ticket: dict[str, Any],
    body: dict[str, Any],
    user: uuid.UUID | None = None,
) -> httpx.Response:
    """PUT ``body`` to the ticket as ``user``: its owner unless given."""
    return await client.put(
        f"/api/tickets/{ticket['id']}",
        json=body,
        headers=users.headers(user or uuid.UUID(ticket["userId"])),
    )


def order_created(ticket: dict[str, Any], order_id: uuid.UUID | None = None) -> OrderCreated:
    return OrderCreated(
        id=order_id or uuid.uuid4(),
        version=0,
        status=OrderStatus.CREATED,
        user_id=uuid.uuid4(),
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        ticket=OrderCreatedTicket(id=ticket["id"], price=ticket["price"]),
    )


def order_cancelled(ticket: dict[str, Any], order_id: uuid.UUID) -> OrderCancelled:
    return OrderCancelled(id=order_id, version=1, ticket=OrderCancelledTicket(id=ticket["id"]))


async def reserve(
    js: JetStreamContext, client: httpx.AsyncClient, ticket: dict[str, Any]
) -> uuid.UUID:
    """Reserve a ticket the real way: an order.created event, then wait until it holds."""
    order_id = uuid.uuid4()
    await send_event(js, order_created(ticket, order_id))

    async def reserved() -> bool:
        r = await client.get(f"/api/tickets/{ticket['id']}")
        return bool(r.json()["orderId"] == str(order_id))

    await eventually(reserved)
    return order_id
