"""The service scaffolding: health, readiness and background work of a running app."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Request
from nats.js import JetStreamContext

from ticketing_common.app import MAX_REQUEST_BODY_BYTES, Runtime, create_service_app
from ticketing_common.db import SessionDep
from ticketing_common.events import TicketCreated
from ticketing_common.messaging import publish
from ticketing_common.settings import ServiceSettings
from ticketing_common.testing import EventProbe, ServiceHarness, TestDatabase, test_settings
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import NatsServer

router = APIRouter()


@router.post("/tickets")
async def create(session: SessionDep) -> dict[str, str]:
    event = TicketCreated(
        id=uuid.uuid4(), version=0, title="t", price=Decimal(1), user_id=uuid.uuid4()
    )
    envelope = await publish(session, event)
    await session.commit()
    return {"eventId": str(envelope.id)}


@router.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return body


@router.post("/break-background-work")
async def break_background_work(request: Request) -> None:
    async def crash() -> None:
        raise RuntimeError("relay lost its mind")

    runtime: Runtime = request.app.state.runtime
    runtime.start(crash(), "outbox-relay")


@pytest.fixture
async def client(
    common_db: TestDatabase, nats_server: NatsServer, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    settings = test_settings(ServiceSettings, common_db.url, nats_server.url)
    app = create_service_app(settings, title="test", routers=[router])
    async with ServiceHarness(app).client() as client:
        yield client
    await common_db.truncate()


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
