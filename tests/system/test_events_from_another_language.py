"""Every event the running platform publishes keeps the contract a consumer in any language reads.

The platform runs as ``make up`` runs it (``python -m ticketing_local`` on a temporary data folder
and a free port). A seller lists two tickets; a buyer buys one and pays, and lets the other's
reservation expire. Then the Node.js consumer reads the whole EVENTS stream from the start and
validates every event against ``common/contracts/events.schema.json`` (on the shared platform,
the events of the other modules' tests as well).

payment.refunded is not driven here: it needs a payment and an expiry to race, which a test
cannot bring about from outside. The Node consumer is shown to accept it in
``tests/contracts/test_node_consumer.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from ticketing_common.events import Subject
from ticketing_common.testing import eventually

from .local_platform import SHARED_EXPIRATION_SECONDS, LocalPlatform

pytestmark = pytest.mark.timeout(420)

EXPIRATION_SECONDS = SHARED_EXPIRATION_SECONDS  # the shared platform's (conftest.py)
EVENTUAL = 30.0  # seconds for an event to travel from one service to another


def nats_url(platform: LocalPlatform) -> str:
    return f"nats://127.0.0.1:{platform.status()['processes']['nats']['port']}"


class Person:
    """Someone using the site, with their own cookies."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def sign_up(self) -> None:
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        response = await self.http.post(
            "/api/users/signup", json={"email": email, "password": "correct horse battery"}
        )
        assert response.status_code == 201, response.text

    async def sell(self, title: str, price: str) -> str:
        response = await self.http.post("/api/tickets", json={"title": title, "price": price})
        assert response.status_code == 201, response.text
        ticket_id: str = response.json()["id"]
        return ticket_id

    async def post_once_known(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST, again while the service has not yet heard of the ticket or order (404)."""
        key = str(uuid.uuid4())  # retries are one request: never a second order

        async def attempt() -> httpx.Response | None:
            response = await self.http.post(path, json=body, headers={"Idempotency-Key": key})
            return None if response.status_code == 404 else response

        response: httpx.Response = await eventually(attempt, timeout=EVENTUAL, interval=0.2)
        return response

    async def order(self, ticket_id: str) -> str:
        response = await self.post_once_known("/api/orders", {"ticketId": ticket_id})
        assert response.status_code == 201, response.text
        order_id: str = response.json()["id"]
        return order_id

    async def order_reaches(self, order_id: str, status: str, timeout: float) -> None:
        async def reached() -> bool:
            response = await self.http.get(f"/api/orders/{order_id}")
            return response.status_code == 200 and response.json()["status"] == status

        await eventually(reached, timeout=timeout, interval=0.2)


async def test_every_event_of_a_purchase_and_an_expiry_keeps_the_contract(
    platform: LocalPlatform, node_consumer: Any
) -> None:
    async with (
        httpx.AsyncClient(base_url=platform.url, timeout=10, trust_env=False) as s,
        httpx.AsyncClient(base_url=platform.url, timeout=10, trust_env=False) as b,
    ):
        seller, buyer = Person(s), Person(b)
        await seller.sign_up()
        await buyer.sign_up()
        concert, play = await seller.sell("Concert", "20.50"), await seller.sell("Play", "35")

        bought = await buyer.order(concert)  # paid at once: well before it could expire
        paid = await buyer.post_once_known(
            "/api/payments", {"orderId": bought, "token": "tok_visa"}
        )
        assert paid.status_code == 201, paid.text
        left = await buyer.order(play)
        await buyer.order_reaches(bought, "complete", EVENTUAL)
        await buyer.order_reaches(left, "cancelled", EXPIRATION_SECONDS + EVENTUAL)

    # The bus admits only its users: the consumer reads as the read-only monitor.
    monitor = platform.data.monitor_credentials()
    result = await asyncio.to_thread(
        node_consumer,
        nats_url(platform),
        NATS_USER=monitor.user,
        NATS_PASSWORD=monitor.password,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["mismatches"] == []
    driven = {subject.value for subject in Subject} - {Subject.PAYMENT_REFUNDED.value}
    assert set(summary["validated"]) == driven, summary
