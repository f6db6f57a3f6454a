"""The connection pool after the server closed its connections (as a PostgreSQL restart does)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ticketing_common.testing import TestDatabase


async def _backend_pids(engine: AsyncEngine, count: int) -> list[int]:
    """The backends of ``count`` pooled connections, all checked out at once, then returned."""
    async with AsyncExitStack() as stack:
        connections: list[AsyncConnection] = [
            await stack.enter_async_context(engine.connect()) for _ in range(count)
        ]
        pids = await asyncio.gather(
            *(conn.scalar(text("SELECT pg_backend_pid()")) for conn in connections)
        )
        for conn in connections:
            await conn.rollback()
    return [int(pid) for pid in pids]


async def test_connections_the_server_closed_are_replaced_at_checkout(
    engine: AsyncEngine, common_db: TestDatabase
) -> None:
    before = await _backend_pids(engine, 3)
    assert engine.pool.checkedin() == 3  # type: ignore[attr-defined]
    # From a connection of its own; the timeout waits until each backend has exited.
    [row] = await common_db.fetch(
        "SELECT bool_and(pg_terminate_backend(pid, 5000)) FROM unnest($1::int[]) pid", before
    )
    assert row[0] is True

    # Every pooled connection is dead: each checkout gets a working one, none fails.
    after = await _backend_pids(engine, 3)
    assert set(after).isdisjoint(before)
