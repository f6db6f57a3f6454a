"""The timer lives in JetStream: it fires at expiresAt, with or without the service running."""

from __future__ import annotations

import functools
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from expiration.service import at_header, schedule_expirations, schedule_subject
from ticketing_common.db import transaction
from ticketing_common.events import (
    EventEnvelope,
    OrderCreated,
    OrderCreatedTicket,
    OrderStatus,
    Subject,
)
from ticketing_common.messaging import Received, ensure_stream
from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_common.testing import EventProbe, ServiceHarness, TestDatabase, send_event
from ticketing_common.testing.helpers import eventually


def order_created(expires_in: timedelta, order_id: uuid.UUID | None = None) -> OrderCreated:
    """An order.created expiring ``expires_in`` from now (in the past if negative)."""
    return OrderCreated(
        id=order_id or uuid.uuid4(),
        version=0,
        status=OrderStatus.CREATED,
        user_id=uuid.uuid4(),
        expires_at=datetime.now(UTC) + expires_in,
        ticket=OrderCreatedTicket(id=uuid.uuid4(), price=Decimal("10.00")),
    )


async def publish_event(
    js: JetStreamContext, event: OrderCreated, envelope: EventEnvelope | None = None
) -> EventEnvelope:
    """Publish as the orders service would (envelope id = Nats-Msg-Id)."""
    await ensure_stream(js)
    return await send_event(js, event, envelope.id if envelope else None)


async def fired(js: JetStreamContext, order_id: uuid.UUID) -> list[Msg]:
    """Every expiration.complete stored for this order, with its JetStream metadata."""
    sub = await js.pull_subscribe(
        Subject.EXPIRATION_COMPLETE.value,
        stream=STREAM_NAME,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30
        ),
    )
    found: list[Msg] = []
    try:
        while True:
            try:
                batch = await sub.fetch(100, timeout=0.2)
            except TimeoutError:
                return found
            found += [m for m in batch if json.loads(m.data)["data"]["orderId"] == str(order_id)]
    finally:
        await sub.unsubscribe()


async def all_published(db: TestDatabase, count: int) -> bool:
    rows = await db.fetch("SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL")
    return bool(rows[0]["n"] == count)


async def schedule_pending(js: JetStreamContext, order_id: uuid.UUID) -> bool:
    try:
        await js.get_last_msg(STREAM_NAME, schedule_subject(order_id))
    except NotFoundError:
        return False
    return True


async def schedule_gone(js: JetStreamContext, order_id: uuid.UUID) -> bool:
    return not await schedule_pending(js, order_id)


def test_at_header_is_rfc3339_utc() -> None:
    when = datetime(2026, 11, 26, 15, 4, 5, 120000, tzinfo=UTC)
    assert at_header(when) == "@at 2026-11-26T15:04:05.120000Z"
    in_berlin = when.astimezone(ZoneInfo("Europe/Berlin"))
    assert at_header(in_berlin) == "@at 2026-11-26T15:04:05.120000Z"
    with pytest.raises(ValueError):
        at_header(when.replace(tzinfo=None))


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text


async def test_expiration_complete_fires_at_expires_at(
    client: httpx.AsyncClient, jetstream: JetStreamContext, event_probe: EventProbe
) -> None:
    event = order_created(timedelta(seconds=2))
    await publish_event(jetstream, event)

    envelope = await event_probe.wait_for(
        "expiration.complete", lambda e: e.data["orderId"] == str(event.id), timeout=10
    )
    assert envelope.subject == Subject.EXPIRATION_COMPLETE
    [msg] = await fired(jetstream, event.id)
    stored_at = msg.metadata.timestamp
    assert stored_at is not None
    # Never early (how late is the scheduler's business, and a benchmark's, not a test's).
    assert stored_at >= event.expires_at - timedelta(milliseconds=50)
    headers = msg.headers or {}
    assert headers["Nats-Scheduler"] == schedule_subject(event.id)
    # The fired message carries no Nats-Msg-Id, so the duplicate window cannot swallow it.
    assert "Nats-Msg-Id" not in headers
    # Once fired the schedule is gone: nothing else will fire for this order.
    assert not await schedule_pending(jetstream, event.id)


async def test_fires_while_the_service_is_stopped(
    harness: ServiceHarness,
    db: TestDatabase,
    jetstream: JetStreamContext,
    event_probe: EventProbe,
) -> None:
    event = order_created(timedelta(seconds=2))
    async with harness.client():
        await publish_event(jetstream, event)
        await eventually(lambda: all_published(db, 1))
        assert await schedule_pending(jetstream, event.id)
    # The service is down well before expiresAt; the server still fires the timer.
    assert datetime.now(UTC) < event.expires_at
    envelope = await event_probe.wait_for(
        "expiration.complete", lambda e: e.data["orderId"] == str(event.id), timeout=10
    )
    assert envelope.data == {"orderId": str(event.id)}
    assert datetime.now(UTC) >= event.expires_at


async def test_past_expiry_fires_at_once(
    client: httpx.AsyncClient, jetstream: JetStreamContext, event_probe: EventProbe
) -> None:
    # An order.created handled after its expiresAt (service was down) still expires the order.
    event = order_created(-timedelta(minutes=5))
    await publish_event(jetstream, event)
    await event_probe.wait_for(
        "expiration.complete", lambda e: e.data["orderId"] == str(event.id), timeout=5
    )


async def test_duplicate_order_created_fires_once(
    client: httpx.AsyncClient,
    db: TestDatabase,
    jetstream: JetStreamContext,
    event_probe: EventProbe,
) -> None:
    event = order_created(timedelta(seconds=2))
    envelope = await publish_event(jetstream, event)
    # The same event delivered again (JetStream's duplicate window bypassed: another msg id)...
    await ensure_stream(jetstream)
    await jetstream.publish(
        "order.created",
        envelope.model_dump_json(by_alias=True).encode(),
        headers={"Nats-Msg-Id": str(uuid.uuid4())},
    )
    # ...and a second order.created for the same order with a new event id (e.g. a republish
    # after the first left the duplicate window).
    await publish_event(jetstream, event)

    await event_probe.wait_for(
        "expiration.complete", lambda e: e.data["orderId"] == str(event.id), timeout=10
    )
    # The inbox dropped the redelivery; the second event id scheduled again on the same subject,
    # which replaced the first timer instead of adding one.
    inbox = await db.fetch("SELECT count(*) AS n FROM inbox")
    assert inbox[0]["n"] == 2
    await eventually(lambda: all_published(db, 2))
    await eventually(lambda: schedule_gone(jetstream, event.id))
    assert len(await fired(jetstream, event.id)) == 1


async def test_timers_scheduled_together_each_fire_with_their_request_id(
    client: httpx.AsyncClient, app: FastAPI, jetstream: JetStreamContext, event_probe: EventProbe
) -> None:
    """The batch handler: the timers of several orders in one statement; each fires at its
    own expiresAt and carries the request id of the order that set it."""
    orders = [order_created(timedelta(seconds=1 + n / 2)) for n in range(3)]
    batch = [Received(order, f"req-{n}") for n, order in enumerate(orders)]
    async with transaction(app.state.sessionmaker) as session:
        assert await schedule_expirations(session, batch) == []  # it leaves none

    for n, order in enumerate(orders):
        await event_probe.wait_for(
            "expiration.complete", functools.partial(_for_order, order.id), timeout=10
        )
        [msg] = await fired(jetstream, order.id)
        assert msg.metadata.timestamp is not None
        assert msg.metadata.timestamp >= order.expires_at - timedelta(milliseconds=50)
        assert (msg.headers or {})["X-Request-Id"] == f"req-{n}"


def _for_order(order_id: uuid.UUID, envelope: EventEnvelope) -> bool:
    return bool(envelope.data["orderId"] == str(order_id))
