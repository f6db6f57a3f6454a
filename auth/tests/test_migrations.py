from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from alembic import command

from auth.models import Base
from ticketing_common.migrations import alembic_config, upgrade
from ticketing_common.testing import TestDatabase

MIGRATIONS = Path(__file__).parents[1] / "src" / "auth" / "migrations"


async def test_migrations_match_the_models(db: TestDatabase) -> None:
    assert await db.schema_drift(Base.metadata) == []


async def test_replicas_migrating_at_once_take_turns(postgres_url: str) -> None:
    """Four initContainers of a rolling update run `migrate` at the same moment."""
    database = await TestDatabase.create(postgres_url, "auth_race")
    env = os.environ | {"DATABASE_URL": database.url, "JWT_KEY": "k" * 40, "LOG_JSON": "false"}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "auth", "migrate", env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = await asyncio.gather(*(p.communicate() for p in processes))
    assert [p.returncode for p in processes] == [0] * 4, [err for _, err in results]
    assert await database.schema_drift(Base.metadata) == []
    (row,) = await database.fetch("SELECT version_num FROM alembic_version")
    assert row["version_num"] == "0003"


async def test_failures_by_email_alone_are_dropped_when_counting_by_client_begins(
    postgres_url: str,
) -> None:
    database = await TestDatabase.create(postgres_url, "auth_0002")
    await asyncio.to_thread(upgrade, MIGRATIONS, database.url, "0001")
    await database.fetch("INSERT INTO signin_failures (email) VALUES ('ada@example.com')")

    await asyncio.to_thread(upgrade, MIGRATIONS, database.url)
    assert await database.schema_drift(Base.metadata) == []
    assert await database.fetch("SELECT * FROM signin_failures") == []
    # The previous release, still serving during a rolling update, can record a failure.
    await database.fetch("INSERT INTO signin_failures (email) VALUES ('ada@example.com')")

    config = alembic_config(MIGRATIONS, database.url)
    await asyncio.to_thread(command.downgrade, config, "0001")
    await database.fetch("INSERT INTO signin_failures (email) VALUES ('ada@example.com')")
