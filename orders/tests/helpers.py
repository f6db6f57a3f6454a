"""What the orders tests do again and again: a buyer orders a ticket through the API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from ticketing_common.events import PaymentCreated, TicketCreated, TicketUpdated
from ticketing_common.testing import TestDatabase, Users
from ticketing_common.testing.plugin import Deliver


async def place_order(
    client: httpx.AsyncClient,
    users: Users,
    buyer: uuid.UUID,
    ticket: TicketCreated,
    *,
    key: str | None = None,
) -> httpx.Response:
    """POST /api/orders for ``ticket`` as ``buyer`` (with an ``Idempotency-Key`` if given)."""
    headers = users.headers(buyer) | ({"Idempotency-Key": key} if key is not None else {})
    return await client.post("/api/orders", json={"ticketId": str(ticket.id)}, headers=headers)


async def order(
    client: httpx.AsyncClient,
    users: Users,
    buyer: uuid.UUID,
    ticket: TicketCreated,
    *,
    key: str | None = None,
) -> dict[str, Any]:
    """The order ``buyer`` placed for ``ticket`` (asserted created)."""
    r = await place_order(client, users, buyer, ticket, key=key)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def reserved(deliver: Deliver, ticket: TicketCreated, order_id: uuid.UUID | str) -> None:
    """Tickets' answer to an order: the ticket (at version 0) reserved for it, which a payment
    waits for."""
    await deliver(
        TicketUpdated(
            id=ticket.id,
            version=ticket.version + 1,
            title=ticket.title,
            price=ticket.price,
            user_id=ticket.user_id,
            order_id=uuid.UUID(str(order_id)),
        )
    )


def payment_of(order_id: uuid.UUID | str) -> PaymentCreated:
    """Payments' word that the order is paid."""
    return PaymentCreated(id=uuid.uuid4(), order_id=uuid.UUID(str(order_id)), provider_ref="p")


async def paid(deliver: Deliver, ticket: TicketCreated, order_id: uuid.UUID | str) -> None:
    """The ticket reserved for the order, then the order paid: it is complete."""
    await reserved(deliver, ticket, order_id)
    await deliver(payment_of(order_id))


async def status_and_version(db: TestDatabase) -> tuple[str, int]:
    """The one order's status and version, as stored."""
    [row] = await db.fetch("SELECT status, version FROM orders")
    return row["status"], row["version"]
