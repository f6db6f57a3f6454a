"""The orders HTTP API, every route and status, against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from pydantic import ValidationError

from orders.app import create_app
from orders.service import TicketNotFoundError, TicketReservedError, _refuse
from orders.settings import OrdersSettings
from ticketing_common.db import make_engine, make_sessionmaker
from ticketing_common.events import TicketCreated
from ticketing_common.messaging.streams import MAX_AGE_SECONDS
from ticketing_common.testing import EventProbe, ServiceHarness, TestDatabase, Users, send_event
from ticketing_common.testing.helpers import (
    MALFORMED_IDS,
    assert_client_errors,
    error_fields,
    eventually,
)
from ticketing_common.testing.plugin import Deliver
from ticketing_common.testing.stand_ins import TicketsStandIn

from .helpers import Shop, paid, status_and_version

# --- POST /api/orders ----------------------------------------------------------------------


async def test_create_order_reserves_and_publishes(shop: Shop, event_probe: EventProbe) -> None:
    before = datetime.now(UTC)
    ordered = await shop.ordered(title="Jazz", price="42.50")
    created, ticket = ordered.order, ordered.ticket

    expires_at = datetime.fromisoformat(created["expiresAt"])
    assert (
        before + timedelta(seconds=900) <= expires_at <= datetime.now(UTC) + timedelta(seconds=900)
    )
    assert created == {
        "id": created["id"],
        "status": "created",
        "userId": str(ordered.buyer),
        "expiresAt": created["expiresAt"],
        "version": 0,
        "ticket": {"id": str(ticket.id), "title": "Jazz", "price": "42.50"},
        "cancelReason": None,
    }

    event = await event_probe.wait_for("order.created")
    assert event.data == {
        "id": created["id"],
        "version": 0,
        "status": "created",
        "userId": str(ordered.buyer),
        "expiresAt": event.data["expiresAt"],
        "ticket": {"id": str(ticket.id), "price": "42.50"},
    }
    assert datetime.fromisoformat(event.data["expiresAt"]) == expires_at


async def test_expiration_window_comes_from_settings(
    settings: OrdersSettings, users: Users, jetstream: JetStreamContext, db: TestDatabase
) -> None:
    app = create_app(settings.model_copy(update={"order_expiration_seconds": 60}))
    async with ServiceHarness(app).client() as client:
        shop = Shop(client, users, TicketsStandIn(jetstream, db))
        created = (await shop.ordered()).order
    remaining = datetime.fromisoformat(created["expiresAt"]) - datetime.now(UTC)
    assert timedelta(seconds=50) < remaining <= timedelta(seconds=60)


async def test_create_requires_sign_in(
    client: httpx.AsyncClient, tickets: TicketsStandIn, db: TestDatabase
) -> None:
    ticket = await tickets.create()
    r = await client.post("/api/orders", json={"ticketId": str(ticket.id)})
    assert r.status_code == 401
    assert await db.fetch("SELECT 1 FROM orders") == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ticketId": "nope"},
        {"ticketId": 5},
        {"ticketId": None},
        {"ticketId": ["x"]},
        {"ticketId": "1" * 1000},
    ],
)
async def test_create_rejects_invalid_ticket_id(
    client: httpx.AsyncClient, users: Users, body: dict[str, Any]
) -> None:
    r = await client.post("/api/orders", json=body, headers=users.headers(uuid.uuid4()))
    assert r.status_code == 400, r.text
    assert error_fields(r) == ["ticketId"]


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"null"])
async def test_create_rejects_malformed_bodies(
    client: httpx.AsyncClient, users: Users, content: bytes
) -> None:
    headers = users.headers(uuid.uuid4()) | {"Content-Type": "application/json"}
    r = await client.post("/api/orders", content=content, headers=headers)
    assert r.status_code == 400
    error_fields(r)


async def test_unknown_ticket_is_404_until_its_replica_arrives(
    client: httpx.AsyncClient,
    users: Users,
    jetstream: JetStreamContext,
) -> None:
    ticket = TicketCreated(
        id=uuid.uuid4(), version=0, title="Soon", price=Decimal(5), user_id=uuid.uuid4()
    )
    buyer = users.headers(uuid.uuid4())
    r = await client.post("/api/orders", json={"ticketId": str(ticket.id)}, headers=buyer)
    assert r.status_code == 404
    assert r.json() == {"errors": [{"message": "Ticket not found", "field": "ticketId"}]}

    await send_event(jetstream, ticket)

    async def ordered() -> httpx.Response | None:
        r = await client.post("/api/orders", json={"ticketId": str(ticket.id)}, headers=buyer)
        assert r.status_code in (201, 404), r.text
        return r if r.status_code == 201 else None

    r = await eventually(ordered)
    assert r.json()["ticket"] == {"id": str(ticket.id), "title": "Soon", "price": "5.00"}


async def test_cannot_buy_own_ticket(shop: Shop, db: TestDatabase) -> None:
    seller = uuid.uuid4()
    r = await shop.place_order(seller, await shop.tickets.create(owner=seller))
    assert r.status_code == 400
    assert r.json() == {
        "errors": [{"message": "You cannot buy your own ticket", "field": "ticketId"}]
    }
    assert await db.fetch("SELECT 1 FROM orders") == []


async def test_reserved_ticket_cannot_be_ordered_again_until_cancelled(
    shop: Shop, db: TestDatabase
) -> None:
    first = await shop.ordered()
    for buyer in (uuid.uuid4(), first.buyer):
        r = await shop.place_order(buyer, first.ticket)
        assert r.status_code == 400
        assert r.json()["errors"][0]["message"] == "Ticket is already reserved"

    assert (await shop.cancel(first.id, first.buyer)).status_code == 204
    second = await shop.order(uuid.uuid4(), first.ticket)
    assert second["id"] != first.id
    assert (await db.outbox_subjects()).count("order.created") == 2


async def test_a_hundred_buyers_race_for_one_ticket(
    shop: Shop, db: TestDatabase, event_probe: EventProbe
) -> None:
    ticket = await shop.tickets.create()
    responses = await asyncio.gather(*(shop.place_order(uuid.uuid4(), ticket) for _ in range(100)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [400] * 99
    assert all(
        r.json() == {"errors": [{"message": "Ticket is already reserved", "field": "ticketId"}]}
        for r in responses
        if r.status_code == 400
    )
    [winner] = [r.json() for r in responses if r.status_code == 201]
    live = await db.fetch("SELECT id FROM orders WHERE status <> 'cancelled'")
    assert [str(row["id"]) for row in live] == [winner["id"]]

    assert (await db.outbox_subjects()).count("order.created") == 1
    await event_probe.wait_for("order.created")
    published = await event_probe.all("order.created")
    assert [e.data["id"] for e in published] == [winner["id"]]


# --- Idempotency-Key -------------------------------------------------------------------------


async def test_retry_with_idempotency_key_returns_the_first_answer(
    shop: Shop, db: TestDatabase, event_probe: EventProbe
) -> None:
    ticket = await shop.tickets.create()
    buyer = uuid.uuid4()
    first = await shop.place_order(buyer, ticket, key="k1")
    retry = await shop.place_order(buyer, ticket, key="k1")
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(await db.fetch("SELECT 1 FROM orders")) == 1
    assert (await db.outbox_subjects()).count("order.created") == 1

    await event_probe.wait_for("order.created")
    assert len(await event_probe.all("order.created")) == 1


async def test_concurrent_retries_with_one_key_make_one_order(shop: Shop, db: TestDatabase) -> None:
    ticket = await shop.tickets.create()
    buyer = uuid.uuid4()
    responses = await asyncio.gather(
        *(shop.place_order(buyer, ticket, key="double-click") for _ in range(20))
    )
    assert [r.status_code for r in responses] == [201] * 20
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(await db.fetch("SELECT 1 FROM orders")) == 1
    assert (await db.outbox_subjects()).count("order.created") == 1


async def test_idempotency_key_reused_for_another_request_is_refused(
    shop: Shop, db: TestDatabase
) -> None:
    first_ticket, other_ticket = await shop.tickets.create(), await shop.tickets.create()
    buyer = uuid.uuid4()
    await shop.order(buyer, first_ticket, key="k")
    r = await shop.place_order(buyer, other_ticket, key="k")
    assert r.status_code == 400
    assert r.json() == {
        "errors": [
            {
                "message": "Idempotency-Key was already used with a different request",
                "field": "Idempotency-Key",
            }
        ]
    }
    assert len(await db.fetch("SELECT 1 FROM orders")) == 1


async def test_idempotency_keys_belong_to_one_user(shop: Shop) -> None:
    first_ticket, other_ticket = await shop.tickets.create(), await shop.tickets.create()
    mine = await shop.order(uuid.uuid4(), first_ticket, key="same")
    theirs = await shop.order(uuid.uuid4(), other_ticket, key="same")
    assert mine["id"] != theirs["id"]


async def test_a_refusal_is_not_remembered_under_the_key(shop: Shop) -> None:
    held = await shop.ordered()
    buyer = uuid.uuid4()
    r = await shop.place_order(buyer, held.ticket, key="try-again")
    assert r.status_code == 400
    await shop.cancel(held.id, held.buyer)
    r = await shop.place_order(buyer, held.ticket, key="try-again")
    assert r.status_code == 201
    assert r.json()["userId"] == str(buyer)


async def test_an_idempotency_key_older_than_a_day_counts_as_new(
    shop: Shop, db: TestDatabase
) -> None:
    first_ticket, other_ticket = await shop.tickets.create(), await shop.tickets.create()
    buyer = uuid.uuid4()
    first = await shop.order(buyer, first_ticket, key="k")
    await db.fetch("UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 minute'")
    # Expired: the key is free again, even for another request; twins still make one order.
    responses = await asyncio.gather(
        *(shop.place_order(buyer, other_ticket, key="k") for _ in range(10))
    )
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    second_ids = {r.json()["id"] for r in responses}
    assert len(second_ids) == 1 and first["id"] not in second_ids
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert responses[0].json()["ticket"]["id"] == str(other_ticket.id)
    [stored] = await db.fetch("SELECT response, created_at FROM idempotency_keys")
    assert json.loads(stored["response"])["id"] in second_ids
    assert stored["created_at"] > datetime.now(UTC) - timedelta(minutes=1)
    assert len(await db.fetch("SELECT 1 FROM orders")) == 2


async def test_an_idempotency_key_younger_than_a_day_is_still_replayed(
    shop: Shop, db: TestDatabase
) -> None:
    ticket = await shop.tickets.create()
    buyer = uuid.uuid4()
    first = await shop.order(buyer, ticket, key="k")
    await db.fetch("UPDATE idempotency_keys SET created_at = now() - interval '23 hours'")
    again = await shop.order(buyer, ticket, key="k")
    assert again == first


@pytest.mark.parametrize("key", [b"", b"x" * 256, b"has space", "caf\u00e9".encode()])
async def test_invalid_idempotency_key_is_400(
    client: httpx.AsyncClient, users: Users, tickets: TicketsStandIn, key: bytes
) -> None:
    ticket = await tickets.create()
    headers = [(k.encode(), v.encode()) for k, v in users.headers(uuid.uuid4()).items()]
    r = await client.post(
        "/api/orders",
        json={"ticketId": str(ticket.id)},
        headers=[*headers, (b"Idempotency-Key", key)],
    )
    assert r.status_code == 400
    assert error_fields(r) == ["Idempotency-Key"]


@pytest.mark.parametrize("seconds", [0, -5, 7 * 24 * 3600 + 1, 14 * 24 * 3600])
def test_expiration_must_stay_well_inside_the_stream_retention(
    settings: OrdersSettings, seconds: int
) -> None:
    with pytest.raises(ValidationError, match="order_expiration_seconds"):
        OrdersSettings(**(settings.model_dump() | {"order_expiration_seconds": seconds}))


def test_the_longest_expiration_leaves_the_stream_a_week_spare(settings: OrdersSettings) -> None:
    week = 7 * 24 * 3600
    longest = OrdersSettings(**(settings.model_dump() | {"order_expiration_seconds": week}))
    assert longest.order_expiration_seconds == week <= MAX_AGE_SECONDS - week


# --- GET /api/orders, GET /api/orders/{id} ----------------------------------------------------


async def test_list_shows_only_my_orders_newest_first(shop: Shop) -> None:
    me, someone = uuid.uuid4(), uuid.uuid4()
    first = await shop.order(me, await shop.tickets.create(title="First"))
    await shop.order(someone, await shop.tickets.create(title="Theirs"))
    second = await shop.order(me, await shop.tickets.create(title="Second"))

    r = await shop.get("/api/orders", me)
    assert r.status_code == 200
    assert r.json() == [second, first]
    assert (await shop.get("/api/orders", uuid.uuid4())).json() == []


async def test_list_requires_sign_in(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/orders")).status_code == 401


async def test_show_order(shop: Shop) -> None:
    ordered = await shop.ordered()

    r = await shop.get(ordered.url, ordered.buyer)
    assert r.status_code == 200 and r.json() == ordered.order
    r = await shop.get(ordered.url, uuid.uuid4())
    assert r.status_code == 403 and r.json() == {"errors": [{"message": "This order is not yours"}]}
    assert (await shop.client.get(ordered.url)).status_code == 401
    r = await shop.get(f"/api/orders/{uuid.uuid4()}", ordered.buyer)
    assert r.status_code == 404 and r.json() == {"errors": [{"message": "Order not found"}]}


@pytest.mark.parametrize("bad_id", MALFORMED_IDS)
async def test_malformed_order_ids_are_client_errors(
    client: httpx.AsyncClient, users: Users, bad_id: str
) -> None:
    await assert_client_errors(client, users, ("GET", "DELETE"), f"/api/orders/{bad_id}")


# --- DELETE /api/orders/{id} ------------------------------------------------------------------


async def test_cancel_order_publishes_once(
    shop: Shop, db: TestDatabase, event_probe: EventProbe
) -> None:
    ordered = await shop.ordered()

    r = await shop.cancel(ordered.id, ordered.buyer)
    assert r.status_code == 204 and r.content == b""
    shown = (await shop.get(ordered.url, ordered.buyer)).json()
    assert (shown["status"], shown["version"]) == ("cancelled", 1)
    event = await event_probe.wait_for("order.cancelled")
    assert event.data == {"id": ordered.id, "version": 1, "ticket": {"id": str(ordered.ticket.id)}}

    assert (await shop.cancel(ordered.id, ordered.buyer)).status_code == 204
    assert (await db.outbox_subjects()).count("order.cancelled") == 1
    assert (await shop.get(ordered.url, ordered.buyer)).json()["version"] == 1


async def test_cancel_someone_elses_order_is_403(shop: Shop, db: TestDatabase) -> None:
    ordered = await shop.ordered()
    assert (await shop.cancel(ordered.id, uuid.uuid4())).status_code == 403
    [row] = await db.fetch("SELECT status FROM orders")
    assert row["status"] == "created"


async def test_cancel_unknown_or_signed_out(shop: Shop) -> None:
    assert (await shop.cancel(str(uuid.uuid4()), uuid.uuid4())).status_code == 404
    ordered = await shop.ordered()
    assert (await shop.client.delete(ordered.url)).status_code == 401


async def test_complete_order_cannot_be_cancelled(
    shop: Shop, db: TestDatabase, deliver: Deliver
) -> None:
    ordered = await shop.ordered()
    await paid(deliver, ordered.ticket, ordered.id)

    r = await shop.cancel(ordered.id, ordered.buyer)
    assert r.status_code == 400
    assert r.json() == {
        "errors": [{"message": "Order is already complete and cannot be cancelled"}]
    }
    assert await status_and_version(db) == ("complete", 1)
    assert (await db.outbox_subjects()).count("order.cancelled") == 0


async def test_sales_show_each_of_my_tickets_with_its_state(shop: Shop, deliver: Deliver) -> None:
    seller, buyer = uuid.uuid4(), uuid.uuid4()
    unsold = await shop.tickets.create(owner=seller, title="A unsold")
    held = await shop.tickets.create(owner=seller, title="B reserved")
    sold = await shop.tickets.create(owner=seller, title="C sold")
    released = await shop.tickets.create(owner=seller, title="D released")
    await shop.tickets.create(title="Someone else's")
    await shop.order(buyer, held)
    paid_order = await shop.order(buyer, sold)
    await paid(deliver, sold, paid_order["id"])
    cancelled = await shop.order(buyer, released)
    assert (await shop.cancel(cancelled["id"], buyer)).status_code == 204

    r = await shop.get("/api/orders/sales", seller)
    assert r.status_code == 200, r.text
    assert [(s["ticket"]["id"], s["state"]) for s in r.json()] == [
        (str(unsold.id), "available"),
        (str(held.id), "reserved"),
        (str(sold.id), "sold"),
        (str(released.id), "available"),
    ]
    assert r.json()[0]["ticket"] == {"id": str(unsold.id), "title": "A unsold", "price": "30.00"}
    # The buyer sells nothing; a stranger sees nothing; signed out is 401.
    assert (await shop.get("/api/orders/sales", buyer)).json() == []
    assert (await shop.client.get("/api/orders/sales")).status_code == 401


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/api/orders"]) == {"get", "post"}
    assert set(paths["/api/orders/{order_id}"]) == {"get", "delete"}
    post = paths["/api/orders"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in post["parameters"]]
    assert {"201", "400", "401", "404"} <= set(post["responses"])


async def test_an_order_racing_its_ticket_into_the_replica_is_created_or_not_found(
    shop: Shop, jetstream: JetStreamContext
) -> None:
    """A buyer retrying while the ticket reaches orders' replica gets 404s, then the order:
    never "already reserved" for a ticket nobody holds."""

    async def order_until_known(ticket: TicketCreated) -> int:
        buyer, key = uuid.uuid4(), str(uuid.uuid4())
        while (response := await shop.place_order(buyer, ticket, key=key)).status_code == 404:
            pass
        return response.status_code

    tickets = [
        TicketCreated(
            id=uuid.uuid4(), version=0, title="Race", price=Decimal("5"), user_id=uuid.uuid4()
        )
        for _ in range(12)
    ]
    buyers = [asyncio.create_task(order_until_known(t)) for t in tickets]
    for ticket in tickets:
        await send_event(jetstream, ticket)
    assert await asyncio.wait_for(asyncio.gather(*buyers), timeout=60) == [201] * len(tickets)


async def test_the_reason_for_no_order_is_asked_again_when_it_has_gone(
    shop: Shop, db: TestDatabase
) -> None:
    """The insert found nothing; by the time the reason is asked the ticket may be orderable
    (it reached the replica, or its order ended): then there is no refusal, the insert runs
    again. A ticket with a live order is refused."""
    ordered = await shop.ordered()
    free = await shop.tickets.create()
    engine = make_engine(db.url)
    try:
        async with make_sessionmaker(engine)() as session:
            await _refuse(session, uuid.uuid4(), free.id)  # no reason: it returns
            with pytest.raises(TicketReservedError):
                await _refuse(session, uuid.uuid4(), ordered.ticket.id)
            with pytest.raises(TicketNotFoundError):
                await _refuse(session, uuid.uuid4(), uuid.uuid4())
    finally:
        await engine.dispose()
