"""What the orders tests do again and again: a buyer orders a ticket through the API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from ticketing_common.events import TicketCreated
from ticketing_common.testing import Users


async def order(
    client: httpx.AsyncClient, users: Users, buyer: uuid.UUID, ticket: TicketCreated, **headers: str
) -> dict[str, Any]:
    """The order ``buyer`` placed for ``ticket`` (asserted created)."""
    r = await client.post(
        "/api/orders", json={"ticketId": str(ticket.id)}, headers=users.headers(buyer) | headers
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body
