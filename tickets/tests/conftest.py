from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from ticketing_common.auth import SESSION_COOKIE
from ticketing_common.events import Event, EventEnvelope
from ticketing_common.testing import ServiceHarness, TestDatabase, session_cookie, test_settings
from ticketing_common.testing.plugin import NatsServer
from tickets.app import create_app
from tickets.settings import TicketsSettings

MIGRATIONS = Path(__file__).parents[1] / "src" / "tickets" / "migrations"


@pytest.fixture(scope="session")
async def tickets_db(postgres_url: str) -> TestDatabase:
    return await TestDatabase.create(postgres_url, "tickets", MIGRATIONS)


@pytest.fixture
async def settings(
    tickets_db: TestDatabase, nats_server: NatsServer
) -> AsyncIterator[TicketsSettings]:
    yield test_settings(TicketsSettings, tickets_db.url, nats_server.url)
    await tickets_db.truncate()


@pytest.fixture
async def client(
    settings: TicketsSettings, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    async with ServiceHarness(create_app(settings)).client() as client:
        yield client


class Users:
    """Signed-in users: ``users.headers(user_id)`` are the headers of that user's requests."""

    def __init__(self, settings: TicketsSettings) -> None:
        self._settings = settings

    def headers(self, user_id: uuid.UUID) -> dict[str, str]:
        token = session_cookie(self._settings, user_id)[SESSION_COOKIE]
        return {"Cookie": f"{SESSION_COOKIE}={token}"}


@pytest.fixture
def users(settings: TicketsSettings) -> Users:
    return Users(settings)


async def send_event(
    js: JetStreamContext, event: Event, envelope_id: uuid.UUID | None = None
) -> EventEnvelope:
    """Publish an event as another service's relay would (envelope id = Nats-Msg-Id)."""
    envelope = EventEnvelope.wrap(event)
    if envelope_id is not None:
        envelope = envelope.model_copy(update={"id": envelope_id})
    await js.publish(
        envelope.subject.value,
        json.dumps(envelope.model_dump(mode="json", by_alias=True)).encode(),
        headers={"Nats-Msg-Id": str(envelope.id)},
    )
    return envelope
