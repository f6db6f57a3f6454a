"""The service scaffolding: the request's unit of work, health, readiness and background work."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import APIRouter, Request
from nats.js import JetStreamContext
from sqlalchemy import insert
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ticketing_common.app import MAX_REQUEST_BODY_BYTES, Runtime, create_service_app
from ticketing_common.db import SessionDep
from ticketing_common.errors import BadRequestError
from ticketing_common.events import TicketCreated
from ticketing_common.messaging import publish
from ticketing_common.settings import ServiceSettings
from ticketing_common.testing import EventProbe, ServiceHarness, TestDatabase, test_settings
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import NatsServer
from ticketing_common.testing.stand_ins import effects

router = APIRouter()


@router.post("/tickets")
async def create(session: SessionDep) -> dict[str, str]:
    event = TicketCreated(
        id=uuid.uuid4(), version=0, title="t", price=Decimal(1), user_id=uuid.uuid4()
    )
    envelope = await publish(session, event)
    return {"eventId": str(envelope.id)}


@router.post("/effects/{outcome}", status_code=201)
async def write_effect(outcome: str, session: SessionDep) -> dict[str, str]:
    await session.execute(insert(effects).values(note=outcome))
    if outcome == "refused":
        raise BadRequestError("refused")
    if outcome == "crash":
        raise RuntimeError("unexpected")
    return {"note": outcome}


@router.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return body


@router.post("/break-background-work")
async def break_background_work(request: Request) -> None:
    async def crash() -> None:
        raise RuntimeError("relay lost its mind")

    runtime: Runtime = request.app.state.runtime
    runtime.start(crash(), "outbox-relay")


class RowsWhenResponseStarts:
    """Reads the effects table, on its own connection, as each response starts."""

    seen: ClassVar[dict[str, list[str]]] = {}

    def __init__(self, app: ASGIApp, database: TestDatabase) -> None:
        self.app = app
        self.database = database

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def look_then_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                rows = await self.database.fetch("SELECT note FROM effects ORDER BY id")
                self.seen[scope["path"]] = [row["note"] for row in rows]
            await send(message)

        await self.app(scope, receive, look_then_send)


@pytest.fixture
async def client(
    common_db: TestDatabase, nats_server: NatsServer, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    settings = test_settings(ServiceSettings, common_db.url, nats_server.url)
    app = create_service_app(settings, title="test", routers=[router])
    app.add_middleware(RowsWhenResponseStarts, database=common_db)
    async with ServiceHarness(app).client() as client:
        yield client
    await common_db.truncate()


async def test_the_request_commits_before_its_response_starts(client: httpx.AsyncClient) -> None:
    response = await client.post("/effects/kept")
    assert response.status_code == 201
    # Committed before the first byte went out: a client that got 201 finds the row.
    assert RowsWhenResponseStarts.seen["/effects/kept"] == ["kept"]


@pytest.mark.parametrize(("outcome", "status"), [("refused", 400), ("crash", 500)])
async def test_a_failed_request_leaves_nothing_behind(
    client: httpx.AsyncClient, common_db: TestDatabase, outcome: str, status: int
) -> None:
    response = await client.post(f"/effects/{outcome}")
    assert response.status_code == status
    assert response.json()["errors"]
    assert await common_db.fetch("SELECT note FROM effects") == []


async def test_a_request_id_travels_into_the_event(
    client: httpx.AsyncClient, event_probe: EventProbe, jetstream: JetStreamContext
) -> None:
    response = await client.post("/tickets", headers={"X-Request-Id": "checkout-7"})
    event_id = response.json()["eventId"]
    await event_probe.wait_for("ticket.created", lambda e: str(e.id) == event_id)
    msg = await jetstream.get_last_msg("EVENTS", "ticket.created")
    assert msg.headers is not None and msg.headers["X-Request-Id"] == "checkout-7"


async def test_dead_background_work_fails_the_liveness_check(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    await client.post("/break-background-work")

    async def unhealthy() -> bool:
        response = await client.get("/healthz")
        return response.status_code == 503

    await eventually(unhealthy, timeout=5)
    message = (await client.get("/healthz")).json()["errors"][0]["message"]
    assert "outbox-relay stopped" in message and "relay lost its mind" in message


def json_of_size(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    body = b'{"note": ""}'
    return body[:-2] + b"x" * (size - len(body)) + body[-2:]


async def test_a_body_up_to_the_limit_is_read(client: httpx.AsyncClient) -> None:
    body = json_of_size(MAX_REQUEST_BODY_BYTES)
    response = await client.post(
        "/echo", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert len(response.json()["note"]) == MAX_REQUEST_BODY_BYTES - len(b'{"note": ""}')


async def test_a_declared_oversized_body_is_413_before_it_is_read(
    client: httpx.AsyncClient,
) -> None:
    body = json_of_size(9 * 1024 * 1024)
    response = await client.post(
        "/echo", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"errors": [{"message": "Request body too large"}]}
    assert response.headers["x-request-id"]


async def test_a_chunked_oversized_body_is_413_as_soon_as_it_passes_the_limit(
    client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the service learns the size only by reading.
        nonlocal sent
        yield b'{"note": "'
        for _ in range(1000):
            sent += 16 * 1024
            yield b"x" * 16 * 1024
        yield b'"}'

    response = await client.post(
        "/echo", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"errors": [{"message": "Request body too large"}]}
    assert sent < 1000 * 16 * 1024, "the service read the whole body"
