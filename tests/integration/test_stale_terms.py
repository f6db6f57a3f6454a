"""No order on stale terms: a ticket edited as it is ordered never leaves the buyer paying
another price than the ticket's, nor the buyer and the seller seeing different outcomes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.platform import Platform

PAIRS = 50


def as_user(platform: Platform, user_id: uuid.UUID) -> dict[str, str]:
    return {"Cookie": f"session={platform.cookie(user_id=user_id)['session']}"}


async def test_edits_racing_orders_never_leave_an_order_at_another_price(
    platform: Platform,
) -> None:
    tickets = await platform.start("tickets")
    orders = await platform.start("orders")
    seller = as_user(platform, uuid.uuid4())
    listed = []
    for n in range(PAIRS):
        r = await tickets.post(
            "/api/tickets", json={"title": f"Seat {n}", "price": "10.00"}, headers=seller
        )
        assert r.status_code == 201, r.text
        listed.append(r.json())

    async def all_replicated() -> bool:
        rows = await platform.databases["orders"].fetch("SELECT id FROM tickets")
        return len(rows) == PAIRS

    await eventually(all_replicated, timeout=30)

    async def edit(ticket: dict[str, Any]) -> httpx.Response:
        return await tickets.put(
            f"/api/tickets/{ticket['id']}",
            json={"title": ticket["title"], "price": "20.00"},
            headers=seller,
        )

    async def buy(ticket: dict[str, Any], buyer: dict[str, str]) -> httpx.Response:
        return await orders.post("/api/orders", json={"ticketId": ticket["id"]}, headers=buyer)

    buyers = [as_user(platform, uuid.uuid4()) for _ in listed]
    # Every edit and every order at once: each pair races on one ticket.
    responses = await asyncio.gather(
        *(edit(ticket) for ticket in listed),
        *(buy(ticket, buyer) for ticket, buyer in zip(listed, buyers, strict=True)),
    )
    edits, placed = responses[:PAIRS], responses[PAIRS:]
    assert all(r.status_code in (200, 400) for r in edits), [r.text for r in edits]
    assert all(r.status_code == 201 for r in placed), [r.text for r in placed]
    ordered = [(r.json(), buyer) for r, buyer in zip(placed, buyers, strict=True)]

    async def outcomes() -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
        """Each order as its buyer sees it and its ticket as the seller does, once tickets has
        answered every order (reserved its ticket, or refused it and orders cancelled it)."""
        seen = []
        for created, buyer in ordered:
            order = (await orders.get(f"/api/orders/{created['id']}", headers=buyer)).json()
            ticket = (await tickets.get(f"/api/tickets/{order['ticket']['id']}")).json()
            if order["status"] != "cancelled" and ticket["orderId"] != order["id"]:
                return None
            seen.append((order, ticket))
        return seen

    settled = await eventually(outcomes, timeout=60, interval=0.5)
    for order, ticket in settled:
        if order["status"] == "cancelled":
            # Refused: the buyer reads why, and the seller's ticket is still for sale.
            assert order["cancelReason"] == "ticket changed, order again"
            assert ticket["orderId"] is None
        else:
            assert ticket["orderId"] == order["id"]
            assert order["ticket"]["price"] == ticket["price"]
