"""The Node.js consumer holds events to the exported JSON Schema, and says when one breaks it.

A fresh EVENTS stream on the test NATS server, filled by hand: one valid event of every subject
(built from the models), then a malformed one. The system test runs the same consumer against
the whole platform.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from nats.js import JetStreamContext

from ticketing_common import events
from ticketing_common.events.catalog import publisher_of
from ticketing_common.messaging import ensure_stream
from ticketing_common.messaging.permissions import MONITOR_USER
from ticketing_common.testing.plugin import NatsServer, SecuredNats


def one_of_each() -> list[events.Event]:
    ticket, order, user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    price = Decimal("25.50")
    return [
        events.TicketCreated(id=ticket, version=0, title="Concert", price=price, user_id=user),
        events.TicketUpdated(
            id=ticket, version=1, title="Concert", price=price, user_id=user, order_id=order
        ),
        events.OrderCreated(
            id=order,
            version=0,
            status=events.OrderStatus.CREATED,
            user_id=uuid.uuid4(),
            expires_at=datetime.now(UTC),
            ticket=events.OrderCreatedTicket(id=ticket, price=price),
        ),
        events.OrderCancelled(id=order, version=1, ticket=events.OrderCancelledTicket(id=ticket)),
        events.ExpirationComplete(order_id=order),
        events.PaymentCreated(id=uuid.uuid4(), order_id=order, provider_ref="ch_1"),
        events.PaymentRefunded(id=uuid.uuid4(), order_id=order, provider_ref="re_1"),
    ]


async def send(js: JetStreamContext, subject: str, envelope: dict[str, Any]) -> None:
    await js.publish(
        subject, json.dumps(envelope).encode(), headers={"Nats-Msg-Id": str(envelope["id"])}
    )


async def send_valid_events(js: JetStreamContext) -> None:
    await ensure_stream(js)
    for event in one_of_each():
        envelope = events.EventEnvelope.wrap(event).model_dump(mode="json", by_alias=True)
        await send(js, event.subject.value, envelope)


def summary_of(stdout: str) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return summary


async def test_every_valid_event_passes(
    jetstream: JetStreamContext, nats_server: NatsServer, node_consumer: Any
) -> None:
    await send_valid_events(jetstream)
    # A timer as expiration sets it: the event it will publish, on its own schedule subject.
    timer = events.EventEnvelope.wrap(events.ExpirationComplete(order_id=uuid.uuid4()))
    await jetstream.publish(
        f"schedule.expiration.{timer.data['orderId']}",
        timer.model_dump_json(by_alias=True).encode(),
        headers={
            "Nats-Msg-Id": str(timer.id),
            "Nats-Schedule": "@at 2099-01-01T00:00:00Z",
            "Nats-Schedule-Target": "expiration.complete",
        },
    )

    result = node_consumer(nats_server.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not even a warning about the schema (Ajv's strict mode)
    summary = summary_of(result.stdout)
    assert summary["validated"] == {subject.value: 1 for subject in events.EVENT_TYPES}
    assert summary["schedules"] == 1
    assert summary["mismatches"] == []


def _wrong_price(envelope: dict[str, Any]) -> None:
    envelope["data"]["ticket"]["price"] = 25.5  # a number, where the contract says a string


def _missing_field(envelope: dict[str, Any]) -> None:
    del envelope["data"]["expiresAt"]


def _bad_uuid(envelope: dict[str, Any]) -> None:
    envelope["data"]["userId"] = "not-a-uuid"


def _unknown_status(envelope: dict[str, Any]) -> None:
    envelope["data"]["status"] = "refunded"


def _no_occurred_at(envelope: dict[str, Any]) -> None:
    del envelope["occurredAt"]


@pytest.mark.parametrize(
    ("break_it", "reported"),
    [
        (_wrong_price, "/data/ticket/price must be string"),
        (_missing_field, "must have required property 'expiresAt'"),
        (_bad_uuid, '/data/userId must match format "uuid"'),
        (_unknown_status, "/data/status must be equal to one of the allowed values"),
        (_no_occurred_at, "must have required property 'occurredAt'"),
    ],
)
async def test_a_malformed_event_fails_the_consumer(
    jetstream: JetStreamContext,
    nats_server: NatsServer,
    node_consumer: Any,
    break_it: Any,
    reported: str,
) -> None:
    await send_valid_events(jetstream)
    order = next(e for e in one_of_each() if isinstance(e, events.OrderCreated))
    envelope = events.EventEnvelope.wrap(order).model_dump(mode="json", by_alias=True)
    break_it(envelope)
    await send(jetstream, "order.created", envelope)

    result = node_consumer(nats_server.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported in result.stderr
    (mismatch,) = summary_of(result.stdout)["mismatches"]
    assert mismatch["subject"] == "order.created"


async def test_an_event_on_the_wrong_subject_fails_the_consumer(
    jetstream: JetStreamContext, nats_server: NatsServer, node_consumer: Any
) -> None:
    await ensure_stream(jetstream)
    created = one_of_each()[0]
    envelope = events.EventEnvelope.wrap(created).model_dump(mode="json", by_alias=True)
    await send(jetstream, "ticket.updated", envelope)

    result = node_consumer(nats_server.url)
    assert result.returncode == 1
    assert "envelope subject ticket.created on NATS subject ticket.updated" in result.stderr


async def test_an_empty_stream_fails_the_consumer(
    jetstream: JetStreamContext, nats_server: NatsServer, node_consumer: Any
) -> None:
    await ensure_stream(jetstream)
    result = node_consumer(nats_server.url)
    assert result.returncode == 2
    assert "no event in stream EVENTS" in result.stderr


async def test_the_consumer_reads_a_secured_bus_as_the_monitor(
    secured_nats: SecuredNats, node_consumer: Any
) -> None:
    # Each event sent by the service whose user may publish it, as on the platform.
    for service in ("tickets", "orders", "payments"):
        nc = await secured_nats.connect(service)
        try:
            js = nc.jetstream()
            await ensure_stream(js)
            for event in one_of_each():
                if publisher_of(event.subject) == service:
                    envelope = events.EventEnvelope.wrap(event).model_dump(
                        mode="json", by_alias=True
                    )
                    await send(js, event.subject.value, envelope)
        finally:
            await nc.close()

    refused = node_consumer(secured_nats.url)
    assert refused.returncode == 2
    assert "Authorization Violation" in refused.stderr

    monitor = secured_nats.passwords[MONITOR_USER]
    result = node_consumer(secured_nats.url, NATS_USER=MONITOR_USER, NATS_PASSWORD=monitor)
    assert result.returncode == 0, result.stderr
    validated = summary_of(result.stdout)["validated"]
    assert set(validated) == {s.value for s in events.EVENT_TYPES} - {"expiration.complete"}
