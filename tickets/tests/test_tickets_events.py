"""The tickets consumer: order.created reserves, order.cancelled releases, in any delivery order."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nats.js import JetStreamContext

from ticketing_common.db import transaction
from ticketing_common.events import OrderCreatedTicket
from ticketing_common.messaging import Received
from ticketing_common.testing import EventProbe, TestDatabase, Users, send_event
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import Deliver
from tickets import service

from .helpers import create, order_cancelled, order_created, update


@pytest.fixture
async def ticket(client: httpx.AsyncClient, users: Users) -> dict[str, Any]:
    """A ticket listed by a new user."""
    return await create(client, users)


Edit = Callable[[dict[str, Any]], Awaitable[httpx.Response]]


@pytest.fixture
def edit(client: httpx.AsyncClient, users: Users, ticket: dict[str, Any]) -> Edit:
    """``await edit(body)``: the ticket's owner PUTs ``body`` to it."""
    return functools.partial(update, client, users, ticket)


async def holder_and_version(db: TestDatabase) -> tuple[uuid.UUID | None, int]:
    """The order the one ticket is reserved for (None: for sale), and the ticket's version."""
    [row] = await db.fetch("SELECT order_id, version FROM tickets")
    return row["order_id"], row["version"]


async def holders_and_versions(db: TestDatabase) -> dict[uuid.UUID, tuple[uuid.UUID | None, int]]:
    """Each ticket's holder and version, by its id."""
    rows = await db.fetch("SELECT id, order_id, version FROM tickets")
    return {row["id"]: (row["order_id"], row["version"]) for row in rows}


async def test_order_created_reserves_and_order_cancelled_releases(
    client: httpx.AsyncClient,
    ticket: dict[str, Any],
    jetstream: JetStreamContext,
    event_probe: EventProbe,
) -> None:
    order_id = uuid.uuid4()
    await send_event(jetstream, order_created(ticket, order_id))

    reserved = await event_probe.wait_for("ticket.updated", lambda e: e.data["version"] == 1)
    assert reserved.data["orderId"] == str(order_id)
    shown = (await client.get(f"/api/tickets/{ticket['id']}")).json()
    assert shown["orderId"] == str(order_id) and shown["version"] == 1
    assert (await client.get("/api/tickets")).json() == []

    await send_event(jetstream, order_cancelled(ticket, order_id))
    released = await event_probe.wait_for("ticket.updated", lambda e: e.data["version"] == 2)
    assert released.data["orderId"] is None
    assert (await client.get("/api/tickets")).json() == [shown | {"orderId": None, "version": 2}]


async def test_redelivered_event_has_no_second_effect(
    ticket: dict[str, Any], jetstream: JetStreamContext, db: TestDatabase, deliver: Deliver
) -> None:
    event = order_created(ticket)
    first = await deliver(event)
    # The same event id again past JetStream's duplicate window (a replay): the inbox drops it.
    await jetstream.publish(
        "order.created",
        first.model_dump_json(by_alias=True).encode(),
        headers={"Nats-Msg-Id": f"{first.id}-replay"},
    )
    await deliver(order_cancelled(ticket, uuid.uuid4()))
    assert await holder_and_version(db) == (event.id, 1)
    assert len(await db.fetch("SELECT 1 FROM outbox WHERE nats_subject = 'ticket.updated'")) == 1


async def test_cancellation_of_another_order_leaves_the_reservation(
    ticket: dict[str, Any], db: TestDatabase, deliver: Deliver
) -> None:
    holder = uuid.uuid4()
    await deliver(order_created(ticket, holder))
    await deliver(order_cancelled(ticket, uuid.uuid4()))
    assert await holder_and_version(db) == (holder, 1)


async def test_next_order_waits_for_the_previous_cancellation(
    ticket: dict[str, Any],
    jetstream: JetStreamContext,
    event_probe: EventProbe,
    db: TestDatabase,
    deliver: Deliver,
) -> None:
    """order.created B can overtake order.cancelled A: B is retried until A has let go."""
    first, second = uuid.uuid4(), uuid.uuid4()
    await deliver(order_created(ticket, first))

    await send_event(jetstream, order_created(ticket, second))
    await send_event(jetstream, order_cancelled(ticket, first))

    final = await event_probe.wait_for("ticket.updated", lambda e: e.data["version"] == 3)
    assert final.data["orderId"] == str(second)
    assert await holder_and_version(db) == (second, 3)


async def test_cancellation_arriving_before_creation_never_reserves(
    ticket: dict[str, Any], jetstream: JetStreamContext, db: TestDatabase, deliver: Deliver
) -> None:
    holder, late = uuid.uuid4(), uuid.uuid4()
    await deliver(order_created(ticket, holder))
    # `late` was created and cancelled while `holder` held the ticket; its cancellation lands first.
    await deliver(order_cancelled(ticket, late))
    late_created = await send_event(jetstream, order_created(ticket, late))
    await deliver(order_cancelled(ticket, holder))
    await db.wait_handled(late_created.id)

    assert await holder_and_version(db) == (None, 2)


async def test_update_racing_a_reservation_loses_nothing(
    ticket: dict[str, Any], edit: Edit, deliver: Deliver, event_probe: EventProbe, db: TestDatabase
) -> None:
    order_id = uuid.uuid4()
    # The price stays: an order at the ticket's price is reserved, whatever the title.
    _, responses = await asyncio.gather(
        deliver(order_created(ticket, order_id)),
        asyncio.gather(*(edit({"title": f"v{i}", "price": ticket["price"]}) for i in range(15))),
    )
    accepted = [r for r in responses if r.status_code == 200]
    assert all(r.status_code in (200, 400) for r in responses)
    assert all(r.json()["orderId"] is None for r in accepted)

    holder, version = await holder_and_version(db)
    assert holder == order_id
    assert version == len(accepted) + 1  # every change counted once

    async def published() -> list[Any]:
        events = await event_probe.all("ticket.updated")
        return events if len(events) == len(accepted) + 1 else []

    events = await eventually(published)
    assert sorted(e.data["version"] for e in events) == list(range(1, len(accepted) + 2))
    outbox = await db.fetch("SELECT 1 FROM outbox WHERE nats_subject = 'ticket.updated'")
    assert len(outbox) == len(accepted) + 1  # none still waiting to go out
    assert [e.data["orderId"] for e in events if e.data["version"] == version] == [str(order_id)]


async def test_an_order_priced_before_a_price_change_is_refused(
    ticket: dict[str, Any], edit: Edit, deliver: Deliver, event_probe: EventProbe, db: TestDatabase
) -> None:
    r = await edit({"title": ticket["title"], "price": "99.00"})
    assert r.status_code == 200, r.text
    stale = order_created(ticket)  # priced before the change, at the old price
    await deliver(stale)

    assert await holder_and_version(db) == (None, 2)  # still for sale
    refusal = await event_probe.wait_for("ticket.updated", lambda e: e.data["version"] == 2)
    assert refusal.data["refusedOrderId"] == str(stale.id)
    assert refusal.data["orderId"] is None and refusal.data["price"] == "99.00"


async def test_all_pooled_connections_terminated_http_and_events_go_on(
    client: httpx.AsyncClient, ticket: dict[str, Any], db: TestDatabase, deliver: Deliver
) -> None:
    """As after a PostgreSQL restart: every connection of the service is gone at once, and
    the pool holds none that still works. No request fails and no event is held back."""

    async def shown() -> list[int]:
        # Several at once, so that several pooled connections are in play.
        answers = await asyncio.gather(
            *(client.get(f"/api/tickets/{ticket['id']}") for _ in range(5))
        )
        return [r.status_code for r in answers]

    assert await shown() == [200] * 5
    first, second = uuid.uuid4(), uuid.uuid4()
    await deliver(order_created(ticket, first))
    terminated = await db.fetch(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert len(terminated) >= 2 and all(row[0] for row in terminated)

    assert await shown() == [200] * 5
    await deliver(order_cancelled(ticket, first))
    await deliver(order_created(ticket, second))
    assert await holder_and_version(db) == (second, 3)
    assert await db.fetch("SELECT 1 FROM parked_events") == []
    assert await shown() == [200] * 5


async def test_orders_reserved_together_each_announced_the_unusual_left_to_reserve(
    client: httpx.AsyncClient, users: Users, app: FastAPI, db: TestDatabase, deliver: Deliver
) -> None:
    """The batch handler: the usual case (a free ticket at the order's price) for several
    orders in three statements; a ticket held, repriced, missing, or an order with a tombstone
    is left to ``reserve`` or dropped, as ``reserve`` would."""
    free = [await create(client, users, title=f"free {n}") for n in range(3)]
    held, repriced, with_tombstone = [await create(client, users) for _ in range(3)]
    held_by = uuid.uuid4()
    await deliver(order_created(held, held_by))
    cancelled_first = uuid.uuid4()
    await deliver(order_cancelled(with_tombstone, cancelled_first))
    missing = {"id": str(uuid.uuid4()), "price": "20.00"}
    orders = [order_created(ticket) for ticket in free]
    unusual = [
        order_created(held),
        order_created(repriced).model_copy(
            update={"ticket": OrderCreatedTicket(id=repriced["id"], price=Decimal("1.00"))}
        ),
        order_created(missing),
    ]
    tombstoned = order_created(with_tombstone, cancelled_first)
    received = [
        Received(order, f"req-{n}")
        for n, order in enumerate([*orders[:2], *unusual, tombstoned, orders[2]])
    ]
    async with transaction(app.state.sessionmaker) as session:
        left = await service.reserve_all(session, received)

    assert [r.event for r in left] == unusual
    state = await holders_and_versions(db)
    for order in orders:
        assert state[order.ticket.id] == (order.id, 1)
    assert state[uuid.UUID(with_tombstone["id"])] == (None, 0)  # cancelled first: not reserved
    assert state[uuid.UUID(repriced["id"])] == (None, 0)  # left as it was, for reserve()
    announced = await db.fetch(
        "SELECT envelope->'data'->>'orderId' AS order_id, headers->>'X-Request-Id' AS request_id"
        " FROM outbox WHERE nats_subject = 'ticket.updated' AND envelope->'data'->>'version' = '1'"
    )
    # One ticket.updated per order reserved (the held ticket's came from its own delivery),
    # each with the request id of the order that caused it.
    expected = {str(r.event.id): r.request_id for r in received if r.event in orders}
    expected[str(held_by)] = None
    assert {row["order_id"]: row["request_id"] for row in announced} == expected


async def test_orders_cancelled_together_free_their_tickets_the_unusual_left_to_release(
    client: httpx.AsyncClient, users: Users, app: FastAPI, db: TestDatabase, deliver: Deliver
) -> None:
    """The batch handler for cancellations: each ticket held by its cancelled order is freed
    and announced, in three statements; a ticket held by another order, or whose order.created
    has not come yet, is left to ``release`` (which leaves the tombstone)."""
    held = [await create(client, users, title=f"held {n}") for n in range(3)]
    orders = [order_created(ticket) for ticket in held]
    for order in orders:
        await deliver(order)
    someone_elses, not_yet = [await create(client, users) for _ in range(2)]
    await deliver(order_created(someone_elses))
    cancellations = [order_cancelled(t, order.id) for t, order in zip(held, orders, strict=True)]
    unusual = [order_cancelled(someone_elses, uuid.uuid4()), order_cancelled(not_yet, uuid.uuid4())]
    received = [
        Received(cancellation, f"req-{n}")
        for n, cancellation in enumerate([cancellations[0], *unusual, *cancellations[1:]])
    ]
    async with transaction(app.state.sessionmaker) as session:
        left = await service.release_all(session, received)

    assert [r.event for r in left] == unusual
    state = await holders_and_versions(db)
    for ticket in held:
        assert state[uuid.UUID(ticket["id"])] == (None, 2)  # reserved at 1, released at 2
    assert state[uuid.UUID(someone_elses["id"])][1] == 1  # still held by its own order
    assert state[uuid.UUID(not_yet["id"])] == (None, 0)
    assert await db.fetch("SELECT 1 FROM cancelled_orders") == []  # release() leaves those
    announced = await db.fetch(
        "SELECT envelope->'data'->>'id' AS ticket_id, envelope->'data'->>'orderId' AS order_id,"
        " headers->>'X-Request-Id' AS request_id"
        " FROM outbox WHERE nats_subject = 'ticket.updated' AND envelope->'data'->>'version' = '2'"
    )
    expected = {r.event.ticket.id: r.request_id for r in received if r.event in cancellations}
    assert {uuid.UUID(row["ticket_id"]): row["request_id"] for row in announced} == expected
    assert {row["order_id"] for row in announced} == {None}
