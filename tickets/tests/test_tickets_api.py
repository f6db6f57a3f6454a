"""The tickets HTTP API, every route and status, against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import re
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from ticketing_common.testing import EventProbe, TestDatabase, Users
from ticketing_common.testing.helpers import (
    MALFORMED_IDS,
    assert_client_errors,
    error_fields,
    eventually,
)

from .helpers import create, reserve, update

# --- POST /api/tickets ---------------------------------------------------------------------


async def test_create_returns_ticket_stores_exact_price_and_publishes(
    client: httpx.AsyncClient, users: Users, event_probe: EventProbe, db: TestDatabase
) -> None:
    owner = uuid.uuid4()
    r = await client.post(
        "/api/tickets",
        json={"title": "  Opera night  ", "price": "1234.5"},
        headers=users.headers(owner),
    )
    assert r.status_code == 201, r.text
    ticket = r.json()
    assert ticket == {
        "id": ticket["id"],
        "title": "Opera night",
        "price": "1234.50",
        "userId": str(owner),
        "orderId": None,
        "version": 0,
    }
    [row] = await db.fetch(
        "SELECT price, version FROM tickets WHERE id = $1", uuid.UUID(ticket["id"])
    )
    assert row["price"] == Decimal("1234.50") and row["version"] == 0

    event = await event_probe.wait_for("ticket.created", lambda e: e.data["id"] == ticket["id"])
    # The ticket as answered, but for its order: a new ticket has none to tell.
    assert event.data == {k: v for k, v in ticket.items() if k != "orderId"}


@pytest.mark.parametrize("price", ["0.01", 0.01, 1000000, "1000000.00", "19.90", 7])
async def test_create_accepts_price_bounds(
    client: httpx.AsyncClient, users: Users, price: Any
) -> None:
    ticket = await create(client, users, price=price)
    assert Decimal(ticket["price"]) == Decimal(str(price))


@pytest.mark.parametrize(
    "title", ["Café crème", "日本語のコンサート", "Rock 🎸", "👩\u200d👩\u200d👧"]
)
async def test_create_accepts_real_text_in_any_script(
    client: httpx.AsyncClient, users: Users, title: str
) -> None:
    ticket = await create(client, users, uuid.uuid4(), title=title)
    assert ticket["title"] == title


async def test_create_accepts_a_120_character_title(
    client: httpx.AsyncClient, users: Users
) -> None:
    ticket = await create(client, users, title="x" * 120)
    assert ticket["title"] == "x" * 120


# Each with a valid other field: the one field named is at fault.
BAD_TITLES = [
    "",
    "   ",
    "x" * 121,
    12,
    "nul\x00byte",
    "two\nlines",
    "next\u0085line",
    "\u0085",
    "\u202eevil.exe",
    "a\u2066b",
    "\u200b",
    "\u200b\u200d\ufeff",
]
BAD_PRICES = [
    "0",
    -5,
    "1000000.01",
    "10.123",
    10.123,
    "ten",
    "NaN",
    "Infinity",
    "1_000",
    "\uff11\uff12",
    "\u0663",
    " 12",
    "1e3",
    "+12",
    True,
    None,
]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"title": title, "price": "10"}, "title") for title in BAD_TITLES]
    + [({"title": "A", "price": price}, "price") for price in BAD_PRICES]
    + [({"price": "10"}, "title"), ({"title": "A"}, "price")],
)
async def test_create_rejects_invalid_input(
    client: httpx.AsyncClient,
    users: Users,
    db: TestDatabase,
    body: dict[str, Any],
    field: str,
) -> None:
    r = await client.post("/api/tickets", json=body, headers=users.headers(uuid.uuid4()))
    assert r.status_code == 400, r.text
    assert field in error_fields(r)
    assert await db.fetch("SELECT 1 FROM tickets UNION ALL SELECT 1 FROM outbox") == []


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'"x"', b"null"])
async def test_create_rejects_malformed_bodies(
    client: httpx.AsyncClient, users: Users, content: bytes
) -> None:
    headers = users.headers(uuid.uuid4()) | {"Content-Type": "application/json"}
    r = await client.post("/api/tickets", content=content, headers=headers)
    assert r.status_code == 400, r.text
    error_fields(r)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Cookie": "session=not-a-jwt"}, {"Cookie": "session=eyJhbGciOiJub25lIn0.e30."}],
)
async def test_create_requires_sign_in(
    client: httpx.AsyncClient, db: TestDatabase, headers: dict[str, str]
) -> None:
    r = await client.post("/api/tickets", json={"title": "A", "price": "10"}, headers=headers)
    assert r.status_code == 401
    assert error_fields(r) == [None]
    assert await db.fetch("SELECT 1 FROM tickets") == []


# --- GET /api/tickets/{id} -----------------------------------------------------------------


async def test_show_returns_any_ticket_without_sign_in(
    client: httpx.AsyncClient, users: Users
) -> None:
    ticket = await create(client, users)
    r = await client.get(f"/api/tickets/{ticket['id']}")
    assert r.status_code == 200
    assert r.json() == ticket


async def test_show_unknown_ticket_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/api/tickets/{uuid.uuid4()}")
    assert r.status_code == 404
    assert r.json() == {"errors": [{"message": "Ticket not found"}]}


@pytest.mark.parametrize("bad_id", MALFORMED_IDS)
async def test_malformed_ids_are_client_errors(
    client: httpx.AsyncClient, users: Users, bad_id: str
) -> None:
    body = {"title": "A", "price": "1"}
    await assert_client_errors(client, users, ("GET", "PUT"), f"/api/tickets/{bad_id}", json=body)


# --- GET /api/tickets ----------------------------------------------------------------------


async def test_list_shows_available_tickets_newest_first(
    client: httpx.AsyncClient, users: Users, jetstream: JetStreamContext
) -> None:
    created = [await create(client, users, title=f"T{i}") for i in range(4)]
    await reserve(jetstream, client, created[1])

    r = await client.get("/api/tickets")
    assert r.status_code == 200
    assert "Link" not in r.headers
    assert [t["title"] for t in r.json()] == ["T3", "T2", "T0"]
    assert r.json()[0] == created[3]


def next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    return match.group(1)


async def test_list_pages_with_a_link_header(client: httpx.AsyncClient, users: Users) -> None:
    created = [await create(client, users, title=f"T{i}") for i in range(5)]

    pages: list[list[str]] = []
    url: str | None = "/api/tickets?limit=2"
    while url is not None:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        pages.append([t["title"] for t in r.json()])
        url = next_link(r)
        if url is not None:
            assert url.startswith("/api/tickets?") and "limit=2" in url
    assert pages == [["T4", "T3"], ["T2", "T1"], ["T0"]]

    # A ticket listed after page 1 was served does not shift later pages (keyset, not offset).
    r = await client.get("/api/tickets?limit=2")
    second = next_link(r)
    assert second is not None
    await create(client, users, title="T5")
    r = await client.get(second)
    assert [t["title"] for t in r.json()] == ["T2", "T1"]
    assert len(created) == 5


async def test_list_default_and_maximum_page_sizes(
    client: httpx.AsyncClient, db: TestDatabase
) -> None:
    # 201 tickets in one statement: all share one created_at, so the id must break the tie.
    await db.fetch(
        "INSERT INTO tickets (id, title, price, user_id, version) "
        "SELECT gen_random_uuid(), 'T' || n, 1, gen_random_uuid(), 0 FROM generate_series(1, 201) n"
    )
    r = await client.get("/api/tickets")
    assert len(r.json()) == 50 and next_link(r) is not None
    r = await client.get("/api/tickets?limit=200")
    first_page = [t["id"] for t in r.json()]
    assert len(first_page) == 200
    last = next_link(r)
    assert last is not None
    r = await client.get(last)
    assert len(r.json()) == 1 and next_link(r) is None
    assert len(set(first_page) | {r.json()[0]["id"]}) == 201

    seen: list[str] = []
    url: str | None = "/api/tickets?limit=7"
    while url is not None:
        r = await client.get(url)
        seen += [t["id"] for t in r.json()]
        url = next_link(r)
    assert len(seen) == len(set(seen)) == 201


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=", "cursor"),
        ("cursor=%FF%FE", "cursor"),
        ("cursor=bm90LWEtZGF0ZXxub3QtYS11dWlk", "cursor"),  # "not-a-date|not-a-uuid"
        ("cursor=MjAyNi0wMS0wMVQwMDowMDowMHwxMjM", "cursor"),  # "2026-01-01T00:00:00|123"
        (f"cursor={'A' * 201}", "cursor"),
        # Dates PostgreSQL cannot hold once in UTC: "0001-01-01T00:00:00+05:00|<uuid>", and
        # "9999-12-31T23:59:59-05:00|<uuid>".
        (
            "cursor=MDAwMS0wMS0wMVQwMDowMDowMCswNTowMHwwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDA",
            "cursor",
        ),
        (
            "cursor=OTk5OS0xMi0zMVQyMzo1OTo1OS0wNTowMHwwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDA",
            "cursor",
        ),
    ],
)
async def test_list_rejects_bad_paging_parameters(
    client: httpx.AsyncClient, query: str, field: str
) -> None:
    r = await client.get(f"/api/tickets?{query}")
    assert r.status_code == 400, r.text
    assert error_fields(r) == [field]


# --- PUT /api/tickets/{id} -----------------------------------------------------------------


async def test_owner_updates_ticket_and_version_bumps(
    client: httpx.AsyncClient, users: Users, event_probe: EventProbe
) -> None:
    ticket = await create(client, users)
    r = await update(client, users, ticket, {"title": "Moved", "price": "25.25"})
    assert r.status_code == 200, r.text
    assert r.json() == ticket | {"title": "Moved", "price": "25.25", "version": 1}
    assert (await client.get(f"/api/tickets/{ticket['id']}")).json()["version"] == 1

    event = await event_probe.wait_for("ticket.updated", lambda e: e.data["id"] == ticket["id"])
    assert event.data == r.json() | {"refusedOrderId": None}


async def test_update_by_another_user_is_403(
    client: httpx.AsyncClient, users: Users, db: TestDatabase
) -> None:
    ticket = await create(client, users)
    r = await update(client, users, ticket, {"title": "Mine now", "price": "1"}, uuid.uuid4())
    assert r.status_code == 403
    [row] = await db.fetch("SELECT title, version FROM tickets")
    assert (row["title"], row["version"]) == ("Concert", 0)


async def test_update_requires_sign_in(client: httpx.AsyncClient, users: Users) -> None:
    ticket = await create(client, users)
    r = await client.put(f"/api/tickets/{ticket['id']}", json={"title": "X", "price": "1"})
    assert r.status_code == 401


async def test_update_unknown_ticket_is_404(client: httpx.AsyncClient, users: Users) -> None:
    r = await client.put(
        f"/api/tickets/{uuid.uuid4()}",
        json={"title": "X", "price": "1"},
        headers=users.headers(uuid.uuid4()),
    )
    assert r.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"title": "", "price": "1"},
        {"title": "A", "price": "0"},
        {"title": "A", "price": "1.001"},
        {"title": "A", "price": "1_000"},
        {"title": "\u202eA", "price": "1"},
        {},
    ],
)
async def test_update_rejects_invalid_input(
    client: httpx.AsyncClient, users: Users, db: TestDatabase, body: dict[str, Any]
) -> None:
    ticket = await create(client, users)
    r = await update(client, users, ticket, body)
    assert r.status_code == 400
    error_fields(r)
    [row] = await db.fetch("SELECT version FROM tickets")
    assert row["version"] == 0


async def test_reserved_ticket_cannot_be_updated(
    client: httpx.AsyncClient, users: Users, jetstream: JetStreamContext, db: TestDatabase
) -> None:
    ticket = await create(client, users)
    await reserve(jetstream, client, ticket)
    r = await update(client, users, ticket, {"title": "Later", "price": "1"})
    assert r.status_code == 400
    assert r.json() == {"errors": [{"message": "Ticket is reserved and cannot be edited"}]}
    [row] = await db.fetch("SELECT title, version FROM tickets")
    assert (row["title"], row["version"]) == ("Concert", 1)


async def test_concurrent_updates_never_lose_a_version(
    client: httpx.AsyncClient, users: Users, event_probe: EventProbe, db: TestDatabase
) -> None:
    ticket = await create(client, users)
    responses = await asyncio.gather(
        *(update(client, users, ticket, {"title": f"v{i}", "price": "1"}) for i in range(20))
    )
    assert [r.status_code for r in responses] == [200] * 20
    assert sorted(r.json()["version"] for r in responses) == list(range(1, 21))
    [row] = await db.fetch("SELECT version FROM tickets")
    assert row["version"] == 20

    async def all_published() -> list[int]:
        versions = [e.data["version"] for e in await event_probe.all("ticket.updated")]
        return versions if len(versions) >= 20 else []

    assert sorted(await eventually(all_published)) == list(range(1, 21))
    # And no 21st waiting in the outbox (committed with the change, maybe not yet published).
    outbox = await db.fetch("SELECT 1 FROM outbox WHERE nats_subject = 'ticket.updated'")
    assert len(outbox) == 20


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/api/tickets"]) == {"get", "post"}
    assert set(paths["/api/tickets/{ticket_id}"]) == {"get", "put"}
    assert "403" in paths["/api/tickets/{ticket_id}"]["put"]["responses"]


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
