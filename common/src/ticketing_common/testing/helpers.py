from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi import FastAPI
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ticketing_common.auth import SESSION_COOKIE, UserClaims, create_session_token
from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.events import Event, EventEnvelope
from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_common.messaging.tables import messaging_metadata
from ticketing_common.migrations import upgrade
from ticketing_common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)

TEST_JWT_KEY = "test-key-0123456789-0123456789-0123456789"


def test_settings(settings_cls: type[S], database_url: str, nats_url: str, **overrides: Any) -> S:
    """Settings for a service under test: real servers, fast relay poll, few redeliveries."""
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "nats_url": nats_url,
        "jwt_key": TEST_JWT_KEY,
        "outbox_poll_seconds": 0.5,
        "consumer_max_deliveries": 4,
        "log_json": False,
    }
    return settings_cls(**(values | overrides))


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, whatever its name


def session_cookie(
    settings: ServiceSettings, user_id: uuid.UUID | None = None, email: str | None = None
) -> dict[str, str]:
    """Cookies of a signed-in user (a new one unless ``user_id`` is given)."""
    user_id = user_id or uuid.uuid4()
    claims = UserClaims(id=user_id, email=email or f"user-{user_id.hex[:8]}@example.com")
    return {SESSION_COOKIE: create_session_token(claims, settings)}


class Users:
    """Signed-in users: ``users.headers(user_id)`` are the headers of that user's requests.

    Headers rather than client cookies: per-request ``cookies=`` is deprecated in httpx, and
    one client can then act for many users at once.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings

    def headers(self, user_id: uuid.UUID, email: str | None = None) -> dict[str, str]:
        token = session_cookie(self._settings, user_id, email)[SESSION_COOKIE]
        return {"Cookie": f"{SESSION_COOKIE}={token}"}


def error_fields(response: httpx.Response) -> list[str | None]:
    """The fields of an error answer, having checked it is in the common shape."""
    body = response.json()
    assert set(body) == {"errors"} and body["errors"], body
    assert all(e["message"] for e in body["errors"])
    return [e.get("field") for e in body["errors"]]


# Path ids a route must refuse: not UUIDs, a NUL, an injection attempt, one far too long.
MALFORMED_IDS = ["not-a-uuid", "1", "%00", "' OR 1=1 --", "x" * 500]


async def assert_client_errors(
    client: httpx.AsyncClient, users: Users, methods: Sequence[str], url: str, **request: Any
) -> None:
    """Each of ``methods`` on ``url``, by a signed-in user, is refused with a 4xx, common shape."""
    for method in methods:
        r = await client.request(method, url, headers=users.headers(uuid.uuid4()), **request)
        assert 400 <= r.status_code < 500, (method, r.status_code, r.text)
        error_fields(r)


async def send_event(
    js: JetStreamContext, event: Event, envelope_id: uuid.UUID | None = None
) -> EventEnvelope:
    """Publish an event as another service's relay would (envelope id = ``Nats-Msg-Id``).

    Pass ``envelope_id`` to send the same event id again under a fresh message id, as a
    redelivery past the duplicate window would.
    """
    envelope = EventEnvelope.wrap(event)
    if envelope_id is not None:
        envelope = envelope.model_copy(update={"id": envelope_id})
    await js.publish(
        envelope.subject.value,
        envelope.model_dump_json(by_alias=True).encode(),
        headers={"Nats-Msg-Id": str(envelope.id)},
    )
    return envelope


class TestDatabase:
    """A fresh database for one service and one test run, migrated to head."""

    __test__ = False

    def __init__(self, url: str) -> None:
        self.url = url

    @classmethod
    async def create(
        cls, server_url: str, name: str, migrations_dir: Path | None = None
    ) -> TestDatabase:
        """Create the database; apply the service's migrations when ``migrations_dir`` is given."""
        database = f"test_{name}_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(with_driver(server_url, driver=PLAIN))
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        url = with_driver(server_url, database=database)
        if migrations_dir is not None:
            await asyncio.to_thread(upgrade, migrations_dir, url)
        return cls(url)

    async def truncate(self) -> None:
        """Empty every table but Alembic's: the cheap reset between tests."""
        conn = await asyncpg.connect(with_driver(self.url, driver=PLAIN))
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
            if tables:
                names = ", ".join(f'"{t["tablename"]}"' for t in tables)
                await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    async def schema_drift(self, service_metadata: MetaData) -> list[Any]:
        """Differences between the migrated schema and the models (empty when they agree)."""

        expected = MetaData()
        for table in [*service_metadata.tables.values(), *messaging_metadata.tables.values()]:
            table.to_metadata(expected)

        def compare(connection: Connection) -> list[Any]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diffs: list[Any] = compare_metadata(context, expected)
            return diffs

        engine = create_async_engine(self.url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(compare)
        finally:
            await engine.dispose()

    async def outbox_subjects(self) -> list[str]:
        """Every event the service committed, published yet or not, in commit order.

        Asserting on this, not on the stream, sees an event the relay has not sent yet.
        """
        rows = await self.fetch("SELECT nats_subject FROM outbox ORDER BY position")
        return [row["nats_subject"] for row in rows]

    async def outbox_flushed(self) -> bool:
        """True once the relay has published everything committed so far."""
        return not await self.fetch("SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT 1")

    async def wait_handled(self, event_id: uuid.UUID, timeout: float = 15.0) -> None:
        """Wait until the service's consumer has committed the event (its id is in the inbox)."""

        async def in_inbox() -> bool:
            return bool(await self.fetch("SELECT 1 FROM inbox WHERE event_id = $1", event_id))

        await eventually(in_inbox, timeout=timeout)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Read the database directly, to assert what the service really stored."""
        conn = await asyncpg.connect(with_driver(self.url, driver=PLAIN))
        try:
            result: list[asyncpg.Record] = await conn.fetch(query, *args)
            return result
        finally:
            await conn.close()


class ServiceHarness:
    """Runs a service app with its real lifespan (relay, consumer) and an HTTP client to it."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        async with self.app.router.lifespan_context(self.app):
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver"
            ) as client:
                yield client


class EventProbe:
    """Reads published events from the stream, from its start, to await one that matches.

    Reading from the start (not subscribing from now) means an event published before the
    probe looked is still seen; each test has a fresh stream.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def all(self, subject: str, timeout: float = 0.5) -> list[EventEnvelope]:
        """Every event on ``subject`` published so far."""
        sub = await self.js.pull_subscribe(
            subject,
            stream=STREAM_NAME,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30,
            ),
        )
        envelopes: list[EventEnvelope] = []
        try:
            while True:
                try:
                    batch = await sub.fetch(100, timeout=timeout)
                except TimeoutError:
                    return envelopes
                envelopes += [EventEnvelope.model_validate(json.loads(m.data)) for m in batch]
        finally:
            await sub.unsubscribe()

    async def wait_for(
        self,
        subject: str,
        predicate: Callable[[EventEnvelope], bool] = lambda _: True,
        timeout: float = 15.0,
    ) -> EventEnvelope:
        """The first event on ``subject`` that satisfies ``predicate``, within ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for envelope in await self.all(subject, timeout=0.2):
                if predicate(envelope):
                    return envelope
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no matching event on {subject} within {timeout}s")


async def eventually(
    check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll an async ``check`` until it returns something truthy; return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)
