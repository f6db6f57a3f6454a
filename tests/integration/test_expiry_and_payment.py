"""Expiry and payment across services: tickets, orders, expiration and payments on one NATS.

The timer is a JetStream message schedule, so an order expires at its expiresAt even with the
expiration service down; a paid order is never undone by its later expiry; nobody keeps paying
for a ticket they did not get.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_common.testing import EventProbe
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.platform import Platform

EXPIRY_SECONDS = 2


def headers(platform: Platform) -> dict[str, str]:
    """A new signed-in user's headers (a cookie valid for every service)."""
    return {"Cookie": f"session={platform.cookie(user_id=uuid.uuid4())['session']}"}


class Market:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.tickets: httpx.AsyncClient
        self.orders: httpx.AsyncClient
        self.payments: httpx.AsyncClient

    async def start(self, expiry_seconds: int = EXPIRY_SECONDS) -> Market:
        self.tickets = await self.platform.start("tickets")
        self.orders = await self.platform.start("orders", order_expiration_seconds=expiry_seconds)
        await self.platform.start("expiration")
        self.payments = await self.platform.start("payments")
        return self

    def buyer(self) -> dict[str, str]:
        return headers(self.platform)

    async def reserved_order(self, buyer: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A listed ticket and the buyer's order for it, once tickets has reserved it."""
        r = await self.tickets.post(
            "/api/tickets", json={"title": "Gig", "price": "42.00"}, headers=headers(self.platform)
        )
        assert r.status_code == 201, r.text
        ticket: dict[str, Any] = r.json()

        async def ordered() -> httpx.Response | None:
            # 404 until the orders replica has the ticket (ticket.created in flight).
            r = await self.orders.post(
                "/api/orders", json={"ticketId": ticket["id"]}, headers=buyer
            )
            return None if r.status_code == 404 else r

        r = await eventually(ordered)
        assert r.status_code == 201, r.text
        order: dict[str, Any] = r.json()
        await eventually(lambda: self.ticket_order_is(ticket["id"], order["id"]))
        return ticket, order

    async def ticket_order_is(self, ticket_id: str, order_id: str | None) -> bool:
        shown = (await self.tickets.get(f"/api/tickets/{ticket_id}")).json()
        return bool(shown["orderId"] == order_id)

    async def order_status(self, order_id: str, buyer: dict[str, str]) -> str:
        r = await self.orders.get(f"/api/orders/{order_id}", headers=buyer)
        assert r.status_code == 200, r.text
        return str(r.json()["status"])

    async def available(self, ticket_id: str) -> bool:
        listed = (await self.tickets.get("/api/tickets")).json()
        return ticket_id in [t["id"] for t in listed]


async def _cancelled_and_released(
    market: Market, ticket: dict[str, Any], order: dict[str, Any], buyer: dict[str, str]
) -> None:
    async def cancelled() -> bool:
        return await market.order_status(order["id"], buyer) == "cancelled"

    await eventually(cancelled, timeout=20)
    await eventually(lambda: market.ticket_order_is(ticket["id"], None))
    assert await market.available(ticket["id"])


@pytest.fixture
async def market(platform: Platform) -> Market:
    """The services an order lives through, orders expiring after EXPIRY_SECONDS."""
    return await Market(platform).start()


async def test_unpaid_order_expires_and_its_ticket_is_available_again(
    market: Market, event_probe: EventProbe
) -> None:
    buyer = market.buyer()
    ticket, order = await market.reserved_order(buyer)
    assert await market.order_status(order["id"], buyer) == "created"

    await _cancelled_and_released(market, ticket, order, buyer)
    fired = await event_probe.wait_for(
        "expiration.complete", lambda e: e.data["orderId"] == order["id"]
    )
    assert fired.occurred_at is not None
    # Payments heard of it too: paying now is refused.
    r = await market.payments.post(
        "/api/payments", json={"orderId": order["id"], "token": "tok_visa"}, headers=buyer
    )
    assert r.status_code == 400


async def test_order_expires_while_the_expiration_service_is_down(
    market: Market, jetstream: JetStreamContext
) -> None:
    buyer = market.buyer()
    ticket, order = await market.reserved_order(buyer)

    # Once the schedule is in the stream, take the expiration service away.
    async def scheduled() -> bool:
        try:
            await jetstream.get_last_msg(STREAM_NAME, f"schedule.expiration.{order['id']}")
        except NotFoundError:
            return False
        return True

    await eventually(scheduled)
    await market.platform.stop("expiration")

    await _cancelled_and_released(market, ticket, order, buyer)


async def test_paid_order_is_not_cancelled_by_its_expiry(
    market: Market, event_probe: EventProbe
) -> None:
    buyer = market.buyer()
    ticket, order = await market.reserved_order(buyer)

    async def paid() -> httpx.Response | None:
        # 404 until payments has replicated the order.
        r = await market.payments.post(
            "/api/payments", json={"orderId": order["id"], "token": "tok_visa"}, headers=buyer
        )
        return None if r.status_code == 404 else r

    r = await eventually(paid)
    assert r.status_code == 201, r.text

    async def complete() -> bool:
        return await market.order_status(order["id"], buyer) == "complete"

    await eventually(complete)
    # The timer still fires at expiresAt; orders must ignore it for a complete order.
    fired = await event_probe.wait_for(
        "expiration.complete", lambda e: e.data["orderId"] == order["id"]
    )

    async def orders_handled_it() -> bool:
        rows = await market.platform.databases["orders"].fetch(
            "SELECT 1 FROM inbox WHERE event_id = $1", fired.id
        )
        return bool(rows)

    await eventually(orders_handled_it)
    assert await market.order_status(order["id"], buyer) == "complete"
    assert await market.ticket_order_is(ticket["id"], order["id"])
    assert not await market.available(ticket["id"])
    # Nothing committed to go out either (the outbox is written with the effect; the stream
    # alone could still be waiting for the relay).
    assert await market.platform.databases["orders"].outbox_subjects() == ["order.created"]
    assert await market.platform.databases["payments"].outbox_subjects() == ["payment.created"]
    assert await event_probe.all("order.cancelled") == []
    assert await event_probe.all("payment.refunded") == []
    payments = await market.platform.databases["payments"].fetch("SELECT status FROM payments")
    assert [p["status"] for p in payments] == ["succeeded"]


async def test_payment_racing_expiry_ends_consistent(platform: Platform) -> None:
    """Payments submitted just before, at and after expiresAt: each order ends either complete
    and paid exactly once, or cancelled with its ticket released and no money kept."""
    # Long enough that every order is reserved before the first one expires.
    market = await Market(platform).start(expiry_seconds=5)
    offsets = [-0.4, -0.1, -0.03, -0.01, 0.0, 0.1]
    buyers = [headers(platform) for _ in offsets]
    reserved = [await market.reserved_order(buyer) for buyer in buyers]

    async def replicated(order_id: str) -> bool:
        rows = await platform.databases["payments"].fetch(
            "SELECT 1 FROM orders WHERE id = $1", uuid.UUID(order_id)
        )
        return bool(rows)

    async def pay_at(order: dict[str, Any], buyer: dict[str, str], offset: float) -> int:
        await eventually(lambda: replicated(order["id"]))
        moment = datetime.fromisoformat(order["expiresAt"]) + timedelta(seconds=offset)
        await eventually(lambda: _reached(moment), interval=0.005)
        r = await market.payments.post(
            "/api/payments", json={"orderId": order["id"], "token": "tok_visa"}, headers=buyer
        )
        assert r.status_code in (201, 400), r.text
        return r.status_code

    outcomes = await asyncio.gather(
        *(
            pay_at(order, buyer, offset)
            for (_, order), buyer, offset in zip(reserved, buyers, offsets, strict=True)
        )
    )

    async def settled(ticket: dict[str, Any], order: dict[str, Any], buyer: dict[str, str]) -> bool:
        status = await market.order_status(order["id"], buyer)
        payments = await platform.databases["payments"].fetch(
            "SELECT status FROM payments WHERE order_id = $1", uuid.UUID(order["id"])
        )
        kept = [p for p in payments if p["status"] in ("pending", "succeeded")]
        if status == "complete":
            return len(kept) == 1 and await market.ticket_order_is(ticket["id"], order["id"])
        if status == "cancelled":
            return not kept and await market.ticket_order_is(ticket["id"], None)
        return False

    for (ticket, order), buyer in zip(reserved, buyers, strict=True):
        await eventually(functools.partial(settled, ticket, order, buyer), timeout=20)
    # Paying after expiresAt is always refused.
    assert outcomes[-1] == 400


async def _reached(moment: datetime) -> bool:
    return datetime.now(UTC) >= moment
