"""What the orders tests do again and again: a buyer orders a ticket through the API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from ticketing_common.events import PaymentCreated, TicketCreated, TicketUpdated
from ticketing_common.testing import TestDatabase, Users
from ticketing_common.testing.plugin import Deliver
from ticketing_common.testing.stand_ins import TicketsStandIn


@dataclass
class Shop:
    """Buyers ordering, through the orders API, the tickets the tickets stand-in lists."""

    client: httpx.AsyncClient
    users: Users
    tickets: TicketsStandIn

    async def place_order(
        self, buyer: uuid.UUID, ticket: TicketCreated, *, key: str | None = None
    ) -> httpx.Response:
        """POST /api/orders for ``ticket`` as ``buyer`` (with an ``Idempotency-Key`` if given)."""
        headers = self.users.headers(buyer) | ({"Idempotency-Key": key} if key is not None else {})
        return await self.client.post(
            "/api/orders", json={"ticketId": str(ticket.id)}, headers=headers
        )

    async def order(
        self, buyer: uuid.UUID, ticket: TicketCreated, *, key: str | None = None
    ) -> dict[str, Any]:
        """The order ``buyer`` placed for ``ticket`` (asserted created)."""
        r = await self.place_order(buyer, ticket, key=key)
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def ordered(self, *, title: str = "Show", price: str = "30.00") -> Ordered:
        """A new buyer's order for a newly listed ticket."""
        buyer, ticket = uuid.uuid4(), await self.tickets.create(title=title, price=price)
        return Ordered(buyer, ticket, await self.order(buyer, ticket))

    async def get(self, path: str, user: uuid.UUID) -> httpx.Response:
        """GET ``path`` signed in as ``user``."""
        return await self.client.get(path, headers=self.users.headers(user))

    async def cancel(self, order_id: str, user: uuid.UUID) -> httpx.Response:
        """DELETE the order, signed in as ``user``."""
        return await self.client.delete(f"/api/orders/{order_id}", headers=self.users.headers(user))


@dataclass(frozen=True)
class Ordered:
    """A buyer, the ticket they ordered and the order as the API answered it."""

    buyer: uuid.UUID
    ticket: TicketCreated
    order: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.order["id"])

    @property
    def url(self) -> str:
        return f"/api/orders/{self.id}"


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
