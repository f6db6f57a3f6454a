"""The hand-written migrations build exactly the schema the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ticketing_common.messaging.tables import messaging_metadata
from ticketing_common.testing import TestDatabase
from tickets.models import Base


async def test_migrations_match_models(tickets_db: TestDatabase) -> None:
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        metadata = [Base.metadata, messaging_metadata]
        diffs: list[Any] = compare_metadata(context, metadata)  # type: ignore[arg-type]
        return diffs

    engine = create_async_engine(tickets_db.url)
    try:
        async with engine.connect() as connection:
            diffs = await connection.run_sync(differences)
    finally:
        await engine.dispose()
    assert diffs == []
