"""The orders consumer: the tickets replica in version order, expiries and payments."""

from __future__ import annotations

import json
import logging
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from nats.js import JetStreamContext

from orders import service
from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.db import transaction
from ticketing_common.events import ExpirationComplete, TicketCreated, TicketUpdated
from ticketing_common.messaging import Received
from ticketing_common.testing import EventProbe, TestDatabase, send_event
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import Deliver
from ticketing_common.testing.stand_ins import TicketsStandIn

from .helpers import Shop, paid, payment_of, reserved, status_and_version


def updated(
    ticket: TicketCreated, version: int, title: str, order_id: uuid.UUID | None = None
) -> TicketUpdated:
    return TicketUpdated(
        id=ticket.id,
        version=version,
        title=title,
        price=Decimal(f"{10 + version}.00"),
        user_id=ticket.user_id,
        order_id=order_id,
    )


async def replica(db: TestDatabase, ticket_id: uuid.UUID) -> Any:
    rows = await db.fetch("SELECT title, price, version FROM tickets WHERE id = $1", ticket_id)
    return rows[0] if rows else None


async def test_ticket_created_fills_the_replica(tickets: TicketsStandIn, db: TestDatabase) -> None:
    seller = uuid.uuid4()
    ticket = await tickets.create(owner=seller, title="Ballet", price="99.99")
    [row] = await db.fetch("SELECT * FROM tickets")
    assert dict(row) == {
        "id": ticket.id,
        "title": "Ballet",
        "price": Decimal("99.99"),
        "user_id": seller,
        "version": 0,
        "order_id": None,
    }


async def test_ticket_updates_apply_in_version_order(
    tickets: TicketsStandIn, jetstream: JetStreamContext, db: TestDatabase
) -> None:
    ticket = await tickets.create(title="v0")
    await send_event(jetstream, updated(ticket, 2, "v2"))  # from the future: waits
    await send_event(jetstream, updated(ticket, 1, "v1"))

    async def at_v2() -> bool:
        row = await replica(db, ticket.id)
        return bool(row["version"] == 2)

    await eventually(at_v2)
    row = await replica(db, ticket.id)
    assert (row["title"], row["price"], row["version"]) == ("v2", Decimal("12.00"), 2)


async def test_old_and_duplicate_ticket_updates_change_nothing(
    tickets: TicketsStandIn,
    jetstream: JetStreamContext,
    db: TestDatabase,
    deliver: Deliver,
) -> None:
    ticket = await tickets.create(title="v0")
    v1 = await deliver(updated(ticket, 1, "v1"))
    await deliver(updated(ticket, 2, "v2"))

    # The same event again (JetStream drops it), the same event id re-sent past the duplicate
    # window (the inbox drops it), and a stale version under a new id (the version check drops it).
    await send_event(jetstream, updated(ticket, 1, "v1"), envelope_id=v1.id)
    await jetstream.publish(
        "ticket.updated",
        v1.model_dump_json(by_alias=True).encode(),
        headers={"Nats-Msg-Id": f"{v1.id}-again"},
    )
    await deliver(updated(ticket, 1, "stale"))

    row = await replica(db, ticket.id)
    assert (row["title"], row["version"]) == ("v2", 2)
    assert await db.fetch("SELECT 1 FROM parked_events") == []


async def test_reservation_update_keeps_the_replica_in_step(
    shop: Shop, db: TestDatabase, deliver: Deliver
) -> None:
    ordered = await shop.ordered(title="Gig")
    # What the tickets service answers to our order.created.
    await deliver(updated(ordered.ticket, 1, "Gig", uuid.UUID(ordered.id)))
    row = await replica(db, ordered.ticket.id)
    assert row["version"] == 1


async def test_an_order_keeps_the_title_and_price_it_was_made_at(
    shop: Shop, db: TestDatabase, event_probe: EventProbe, deliver: Deliver
) -> None:
    ordered = await shop.ordered(title="Opera", price="80.00")
    ticket = ordered.ticket
    # The replica moves on (the owner edits the ticket after the order was cancelled, say).
    changed = TicketUpdated(
        id=ticket.id,
        version=1,
        title="Opera (new cast)",
        price=Decimal("120.00"),
        user_id=ticket.user_id,
        order_id=None,
    )
    await deliver(changed)
    row = await replica(db, ticket.id)
    assert (row["title"], row["price"]) == ("Opera (new cast)", Decimal("120.00"))

    as_ordered = {"id": str(ticket.id), "title": "Opera", "price": "80.00"}
    assert ordered.order["ticket"] == as_ordered
    shown = await shop.get(ordered.url, ordered.buyer)
    assert shown.json()["ticket"] == as_ordered
    listed = await shop.get("/api/orders", ordered.buyer)
    assert [o["ticket"] for o in listed.json()] == [as_ordered]
    # ... which is the price payments charges.
    event = await event_probe.wait_for("order.created")
    assert event.data["ticket"] == {"id": str(ticket.id), "price": "80.00"}


async def test_update_for_a_ticket_not_yet_known_waits_for_its_creation(
    jetstream: JetStreamContext, db: TestDatabase, client: httpx.AsyncClient
) -> None:
    ticket = TicketCreated(
        id=uuid.uuid4(), version=0, title="v0", price=Decimal("1"), user_id=uuid.uuid4()
    )
    await send_event(jetstream, updated(ticket, 1, "v1"))
    await send_event(jetstream, ticket)

    async def at_v1() -> bool:
        row = await replica(db, ticket.id)
        return row is not None and row["version"] == 1

    await eventually(at_v1)


async def test_expiration_cancels_a_pending_order(
    shop: Shop,
    jetstream: JetStreamContext,
    db: TestDatabase,
    event_probe: EventProbe,
    deliver: Deliver,
) -> None:
    ordered = await shop.ordered()

    expired = await send_event(jetstream, ExpirationComplete(order_id=ordered.id))
    cancelled = await event_probe.wait_for("order.cancelled")
    assert cancelled.data == {
        "id": ordered.id,
        "version": 1,
        "ticket": {"id": str(ordered.ticket.id)},
    }
    shown = (await shop.get(ordered.url, ordered.buyer)).json()
    assert (shown["status"], shown["version"]) == ("cancelled", 1)

    # A second expiry (another event id) for the cancelled order does nothing.
    await db.wait_handled(expired.id)
    await deliver(ExpirationComplete(order_id=ordered.id))
    assert await status_and_version(db) == ("cancelled", 1)
    assert len(await db.fetch("SELECT 1 FROM outbox WHERE nats_subject = 'order.cancelled'")) == 1


async def test_expiration_leaves_a_complete_order(
    shop: Shop, db: TestDatabase, deliver: Deliver
) -> None:
    ordered = await shop.ordered()
    await paid(deliver, ordered.ticket, ordered.id)
    await deliver(ExpirationComplete(order_id=ordered.id))

    assert await status_and_version(db) == ("complete", 1)
    assert await db.fetch("SELECT 1 FROM outbox WHERE nats_subject = 'order.cancelled'") == []


async def test_payment_does_not_complete_a_cancelled_order(
    shop: Shop, db: TestDatabase, deliver: Deliver
) -> None:
    ordered = await shop.ordered()
    assert (await shop.cancel(ordered.id, ordered.buyer)).status_code == 204
    await deliver(payment_of(ordered.id))

    assert await status_and_version(db) == ("cancelled", 1)


async def test_event_for_an_unknown_order_is_parked_not_blocking(
    tickets: TicketsStandIn, jetstream: JetStreamContext, db: TestDatabase
) -> None:
    stray = await send_event(jetstream, ExpirationComplete(order_id=uuid.uuid4()))
    ticket = await tickets.create()  # handled although the stray event keeps failing
    assert await replica(db, ticket.id) is not None

    async def parked() -> bool:
        return bool(await db.fetch("SELECT 1 FROM parked_events WHERE event_id = $1", stray.id))

    await eventually(parked)


async def test_a_row_lock_and_an_early_version_never_park_the_update(
    tickets: TicketsStandIn,
    jetstream: JetStreamContext,
    db: TestDatabase,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's scenario: waiting on a lock, then "not yet" far more often than the failures
    allowed (CONSUMER_MAX_DELIVERIES is 4 here) parks nothing; the replica reaches v2."""
    caplog.set_level(logging.INFO, logger="ticketing_common.messaging.consumer")
    ticket = await tickets.create(title="v0")
    holder = await asyncpg.connect(with_driver(db.url, driver=PLAIN))
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM tickets WHERE id = $1 FOR UPDATE", ticket.id)
            early = await send_event(jetstream, updated(ticket, 2, "v2"))
            await eventually(lambda: _waiting_on_a_lock(db))
        # The lock is gone; v2 is still early, again and again.
        await eventually(lambda: _not_yet_count(caplog, early.id, 6), timeout=30)
        assert await db.fetch("SELECT event_id FROM parked_events") == []
        await send_event(jetstream, updated(ticket, 1, "v1"))

        async def at_v2() -> bool:
            row = await replica(db, ticket.id)
            return bool(row["version"] == 2)

        await eventually(at_v2, timeout=20)
    finally:
        await holder.close()
    assert await db.fetch("SELECT event_id FROM parked_events") == []
    ready = await client.get("/readyz")
    assert ready.json() == {"status": "ready", "parkedEvents": 0}


async def _waiting_on_a_lock(db: TestDatabase) -> bool:
    rows = await db.fetch(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    return bool(rows)


async def _not_yet_count(caplog: pytest.LogCaptureFixture, event_id: uuid.UUID, count: int) -> bool:
    lines = [r for r in caplog.records if "not yet" in r.getMessage()]
    return sum(str(event_id) in r.getMessage() for r in lines) >= count


async def test_readiness_shows_how_many_events_are_parked(
    jetstream: JetStreamContext, client: httpx.AsyncClient
) -> None:
    await jetstream.publish(
        "ticket.updated", b"{not an event", headers={"Nats-Msg-Id": str(uuid.uuid4())}
    )

    async def one_parked() -> bool:
        body = (await client.get("/readyz")).json()
        return bool(body.get("parkedEvents") == 1)

    await eventually(one_parked)


async def test_an_order_tickets_refused_is_cancelled_with_a_reason_the_buyer_reads(
    shop: Shop, db: TestDatabase, deliver: Deliver, event_probe: EventProbe
) -> None:
    ordered = await shop.ordered(title="v0")
    # Tickets had a new price when the order reached it: it refused the reservation.
    changed = updated(ordered.ticket, 1, "v1")
    await deliver(changed.model_copy(update={"refused_order_id": uuid.UUID(ordered.id)}))

    shown = (await shop.get(ordered.url, ordered.buyer)).json()
    assert shown["status"] == "cancelled"
    assert shown["cancelReason"] == "ticket changed, order again"
    cancelled = await event_probe.wait_for("order.cancelled")
    assert cancelled.data["id"] == ordered.id
    # A payment made meanwhile does not complete it (payments refunds it).
    await deliver(payment_of(ordered.id))
    [row] = await db.fetch("SELECT status FROM orders")
    assert row["status"] == "cancelled"
    # The buyer may order again, at today's price.
    again = await shop.order(ordered.buyer, ordered.ticket)
    assert again["ticket"]["price"] == "11.00" and again["cancelReason"] is None


async def test_a_payment_waits_for_the_reservation(
    shop: Shop, db: TestDatabase, jetstream: JetStreamContext, deliver: Deliver
) -> None:
    ordered = await shop.ordered()
    payment = await send_event(jetstream, payment_of(ordered.id))
    await reserved(deliver, ordered.ticket, ordered.id)
    await db.wait_handled(payment.id)
    [row] = await db.fetch("SELECT status FROM orders")
    assert row["status"] == "complete"


async def test_ticket_changes_applied_together_the_unusual_left_to_update_ticket(
    tickets: TicketsStandIn, app: FastAPI, db: TestDatabase, deliver: Deliver
) -> None:
    """The batch handler: the next version of several tickets in one statement; an older
    version, one from the future, an unknown ticket or a refusal is left to ``update_ticket``."""
    usual = [await tickets.create(title=f"t{n}") for n in range(3)]
    older, ahead, refusing = [await tickets.create(title=t) for t in ("old", "ahead", "refuse")]
    await deliver(updated(older, 1, "older v1"))
    unknown = TicketCreated(
        id=uuid.uuid4(), version=0, title="unknown", price=Decimal(1), user_id=uuid.uuid4()
    )
    changes = [updated(ticket, 1, f"{ticket.title} v1", uuid.uuid4()) for ticket in usual]
    unusual = [
        updated(older, 1, "older v1 again"),
        updated(ahead, 2, "ahead v2"),
        updated(unknown, 1, "unknown v1"),
        updated(refusing, 1, "refusing v1").model_copy(update={"refused_order_id": uuid.uuid4()}),
    ]
    batch = [Received(change, None) for change in [changes[0], *unusual, *changes[1:]]]
    async with transaction(app.state.sessionmaker) as session:
        left = await service.update_tickets(session, batch)

    assert [received.event for received in left] == unusual
    for change in changes:
        row = await replica(db, change.id)
        assert (row["title"], row["price"], row["version"]) == (change.title, change.price, 1)
    [holder] = await db.fetch("SELECT order_id FROM tickets WHERE id = $1", changes[0].id)
    assert holder["order_id"] == changes[0].order_id
    assert (await replica(db, older.id))["title"] == "older v1"  # as it was
    assert (await replica(db, ahead.id))["version"] == 0
    assert (await replica(db, refusing.id))["version"] == 0


async def test_orders_expired_together_each_announced_the_rest_left_to_cancel_order(
    shop: Shop, app: FastAPI, db: TestDatabase, deliver: Deliver
) -> None:
    """The batch handler: several live orders cancelled in two statements, each announced with
    the request id of its expiry; an order complete, cancelled already or unknown is left to
    ``cancel_order``, untouched."""
    live = [await shop.ordered() for _ in range(3)]
    complete, cancelled = await shop.ordered(), await shop.ordered()
    await paid(deliver, complete.ticket, complete.id)
    assert (await shop.cancel(cancelled.id, cancelled.buyer)).status_code == 204
    unknown = uuid.uuid4()
    expiries = [
        Received(ExpirationComplete(order_id=uuid.UUID(ordered.id)), f"req-{n}")
        for n, ordered in enumerate(live)
    ]
    unusual = [
        Received(ExpirationComplete(order_id=order_id), None)
        for order_id in (uuid.UUID(complete.id), uuid.UUID(cancelled.id), unknown)
    ]
    async with transaction(app.state.sessionmaker) as session:
        left = await service.expire_orders(session, [expiries[0], *unusual, *expiries[1:]])

    assert left == unusual
    rows = await db.fetch("SELECT id, status, version FROM orders")
    state = {str(row["id"]): (row["status"], row["version"]) for row in rows}
    assert [state[ordered.id] for ordered in live] == [("cancelled", 1)] * 3
    assert state[complete.id] == ("complete", 1) and state[cancelled.id] == ("cancelled", 1)
    announced = await db.fetch(
        "SELECT envelope->'data' AS data, headers->>'X-Request-Id' AS request_id FROM outbox"
        " WHERE nats_subject = 'order.cancelled'"
    )
    # One order.cancelled per live order, with its expiry's request id; the other one is the
    # buyer's own cancellation, from before.
    announcements = [(json.loads(row["data"]), row["request_id"]) for row in announced]
    assert sorted(data["id"] for data, _ in announcements) == sorted(
        [*(ordered.id for ordered in live), cancelled.id]
    )
    for n, ordered in enumerate(live):
        [(data, request_id)] = [a for a in announcements if a[0]["id"] == ordered.id]
        assert data == {"id": ordered.id, "version": 1, "ticket": {"id": str(ordered.ticket.id)}}
        assert request_id == f"req-{n}"
