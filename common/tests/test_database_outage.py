"""A database outage is a 503 the client may retry, never an unhandled 500.

Against a real PostgreSQL: a request whose backend is terminated in the middle of its query or
just before its commit, and a request while nothing accepts connections at the database's
address (as while PostgreSQL restarts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, Request
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from ticketing_common.app import Runtime, create_service_app
from ticketing_common.db import SessionDep
from ticketing_common.embedded import free_port
from ticketing_common.settings import ServiceSettings
from ticketing_common.testing import ServiceHarness, TestDatabase, test_settings
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import NatsServer
from ticketing_common.testing.stand_ins import effects

router = APIRouter()
# The query the first test's request blocks in, so the test can find its backend.
SLOW_QUERY = "SELECT pg_sleep(30) /* outage-test */"
UNAVAILABLE = {"errors": [{"message": "The service is unavailable; try again shortly"}]}


@router.post("/slow", status_code=201)
async def slow(session: SessionDep) -> None:
    await session.execute(insert(effects).values(note="slow"))
    await session.execute(text(SLOW_QUERY))


@router.post("/kept", status_code=201)
async def kept(session: SessionDep) -> None:
    await session.execute(insert(effects).values(note="kept"))


@router.post("/cut-before-commit", status_code=201)
async def cut_before_commit(session: SessionDep, request: Request) -> None:
    await session.execute(insert(effects).values(note="cut"))
    pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    runtime: Runtime = request.app.state.runtime
    async with runtime.engine.connect() as other:
        await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    # Returning commits: on a connection whose backend is gone.


async def client_for(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = test_settings(ServiceSettings, database_url, nats_url)
    app = create_service_app(settings, title="test", routers=[router])
    async with ServiceHarness(app).client() as client:
        yield client


@pytest.fixture
async def client(
    common_db: TestDatabase, nats_server: NatsServer
) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(common_db.url, nats_server.url):
        yield client
    await common_db.truncate()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == UNAVAILABLE
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-request-id"]


def outage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    errors = [r for r in caplog.records if r.name == "ticketing.errors"]
    assert [r.levelno for r in errors] == [logging.WARNING], errors  # no traceback at ERROR
    assert "database unavailable" in errors[0].getMessage()
    return errors


async def test_a_backend_terminated_mid_query_is_503(
    client: httpx.AsyncClient, common_db: TestDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    request = asyncio.create_task(client.post("/slow"))

    async def terminated() -> bool:
        rows = await common_db.fetch(
            "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity"
            " WHERE query = $1 AND pid <> pg_backend_pid()",
            SLOW_QUERY,
        )
        return any(row["done"] for row in rows)

    await eventually(terminated, timeout=10)
    assert_unavailable(await asyncio.wait_for(request, 10))
    outage_records(caplog)
    assert await common_db.fetch("SELECT note FROM effects") == []
    # The pool let the dead connection go: the next request works.
    assert (await client.post("/kept")).status_code == 201


async def test_a_backend_terminated_before_the_commit_is_503_and_nothing_is_written(
    client: httpx.AsyncClient, common_db: TestDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    assert_unavailable(await client.post("/cut-before-commit"))
    outage_records(caplog)
    assert await common_db.fetch("SELECT note FROM effects") == []


async def test_a_request_while_the_database_refuses_connections_is_503(
    nats_server: NatsServer, common_db: TestDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens there: a connection is refused, as while PostgreSQL restarts.
    url = make_url(common_db.url).set(host="127.0.0.1", port=free_port())
    async for client in client_for(url.render_as_string(hide_password=False), nats_server.url):
        caplog.clear()  # the relay's own complaints
        assert_unavailable(await client.post("/kept"))
        outage_records(caplog)
