"""Tickets and orders together, talking only through real JetStream events."""

from __future__ import annotations

import uuid
from typing import Any

from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.platform import Platform


async def test_order_reserves_the_ticket_and_cancelling_releases_it(platform: Platform) -> None:
    tickets = await platform.start("tickets")
    orders = await platform.start("orders")
    seller = platform.cookie(user_id=uuid.uuid4())
    buyer = platform.cookie(user_id=uuid.uuid4())
    seller_headers = {"Cookie": f"session={seller['session']}"}
    buyer_headers = {"Cookie": f"session={buyer['session']}"}

    r = await tickets.post(
        "/api/tickets", json={"title": "Final", "price": "75.00"}, headers=seller_headers
    )
    assert r.status_code == 201, r.text
    ticket = r.json()

    # The orders replica learns of the ticket from ticket.created.
    async def replicated() -> list[Any]:
        return await platform.databases["orders"].fetch(
            "SELECT title, price, version FROM tickets WHERE id = $1", uuid.UUID(ticket["id"])
        )

    [replica] = await eventually(replicated)
    assert (replica["title"], str(replica["price"]), replica["version"]) == ("Final", "75.00", 0)

    r = await orders.post("/api/orders", json={"ticketId": ticket["id"]}, headers=buyer_headers)
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["ticket"] == {"id": ticket["id"], "title": "Final", "price": "75.00"}

    # Tickets reserves it on order.created and leaves the available list.
    async def reserved() -> dict[str, Any] | None:
        shown: dict[str, Any] = (await tickets.get(f"/api/tickets/{ticket['id']}")).json()
        return shown if shown["orderId"] == order["id"] else None

    shown = await eventually(reserved)
    assert shown["version"] == 1
    assert ticket["id"] not in [t["id"] for t in (await tickets.get("/api/tickets")).json()]
    r = await tickets.put(
        f"/api/tickets/{ticket['id']}",
        json={"title": "Changed", "price": "1"},
        headers=seller_headers,
    )
    assert r.status_code == 400

    # The replica follows the reservation's ticket.updated, staying in version step.
    async def replica_at(version: int) -> bool:
        rows = await replicated()
        return bool(rows and rows[0]["version"] == version)

    await eventually(lambda: replica_at(1))

    r = await orders.delete(f"/api/orders/{order['id']}", headers=buyer_headers)
    assert r.status_code == 204

    async def released() -> dict[str, Any] | None:
        shown: dict[str, Any] = (await tickets.get(f"/api/tickets/{ticket['id']}")).json()
        return shown if shown["orderId"] is None else None

    shown = await eventually(released)
    assert shown["version"] == 2
    assert [t for t in (await tickets.get("/api/tickets")).json() if t["id"] == ticket["id"]] == [
        shown
    ]
    await eventually(lambda: replica_at(2))

    # Available again: another buyer can order it.
    r = await orders.post(
        "/api/orders",
        json={"ticketId": ticket["id"]},
        headers={"Cookie": f"session={platform.cookie()['session']}"},
    )
    assert r.status_code == 201, r.text
