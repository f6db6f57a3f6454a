"""Every service on a secured bus, each connected as its own NATS user.

The server admits only the users ``render_authorization`` writes (the ``secured_nats``
fixture), so this shows the rights are enough for what the services really do: each app runs
its real start-up (stream ensure, its durable, the outbox relay, its consumer), and the flow
below makes every service publish what the catalog says it publishes and consume what it
consumes, expiration's timer included. A right missing anywhere leaves an event unsent (its
outbox row unpublished) or unhandled (the flow stalls), and the refusal is logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.platform import Platform
from ticketing_common.testing.plugin import SecuredNats
from ticketing_common.testing.services import SERVICES

from .test_expiry_and_payment import Market, _cancelled_and_released, headers

# Long enough to pay one order first, short enough to watch the other expire.
EXPIRY_SECONDS = 5


@pytest.fixture
async def secured_platform(postgres_url: str, secured_nats: SecuredNats) -> AsyncIterator[Platform]:
    platform = Platform(postgres_url, secured_nats.url, secured_nats.passwords)
    try:
        yield platform
    finally:
        await platform.close()


async def test_every_service_does_its_work_as_its_own_user(
    secured_platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ticketing_common.messaging.connection")
    platform = secured_platform
    auth = await platform.start("auth")
    r = await auth.post(
        "/api/users/signup", json={"email": "bus@example.com", "password": "correct horse 1"}
    )
    assert r.status_code == 201, r.text
    market = await Market(platform).start(expiry_seconds=EXPIRY_SECONDS)
    buyer = headers(platform)

    # ticket.created -> orders; order.created -> tickets, expiration, payments.
    _, paid_order = await market.reserved_order(buyer)
    ticket, order = await market.reserved_order(buyer)

    # payment.created -> orders.
    async def paid() -> httpx.Response | None:
        r = await market.payments.post(
            "/api/payments", json={"orderId": paid_order["id"], "token": "tok_visa"}, headers=buyer
        )
        return None if r.status_code == 404 else r  # 404 until payments has the order

    assert (await eventually(paid)).status_code == 201

    async def complete() -> bool:
        return await market.order_status(paid_order["id"], buyer) == "complete"

    await eventually(complete)

    # Expiration's schedule fires expiration.complete -> orders; order.cancelled -> tickets,
    # payments; ticket.updated -> orders.
    await _cancelled_and_released(market, ticket, order, buyer)

    async def payments_knows_it_is_cancelled() -> bool:
        rows = await platform.databases["payments"].fetch(
            "SELECT 1 FROM orders WHERE id = $1 AND status = 'cancelled'", order["id"]
        )
        return bool(rows)

    await eventually(payments_knows_it_is_cancelled)

    for name in SERVICES:
        database = platform.databases[name]
        # Marked sent a moment after it is acked; never, if the user may not publish it.
        try:
            await eventually(database.outbox_flushed, timeout=5)
        except TimeoutError:
            pytest.fail(f"{name} could not publish an event")
        assert await database.fetch("SELECT * FROM parked_events") == [], name
    refusals = [r.getMessage() for r in caplog.records if "violation" in r.getMessage()]
    assert refusals == []
