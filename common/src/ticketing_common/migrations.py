"""Alembic, driven from code: each service keeps its migrations in its package.

A service's ``migrations/env.py`` is two lines calling :func:`run_env`; ``python -m <service>
migrate`` (and the test fixtures) call :func:`upgrade`.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ticketing_common.messaging.tables import messaging_metadata

# Any constant will do: each service has its own database, so the lock is per service.
MIGRATION_LOCK_KEY = 7_420_001


def migrations_dir(module: str) -> Path:
    """The migrations of the service that ``module`` belongs to: ``<package>/migrations``."""
    package = importlib.import_module(module.partition(".")[0])
    assert package.__file__ is not None
    return Path(package.__file__).parent / "migrations"


def alembic_config(migrations_dir: Path, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(migrations_dir: Path, database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (blocking; run it in a thread from async code)."""
    command.upgrade(alembic_config(migrations_dir, database_url), revision)


def run_env(service_metadata: MetaData) -> None:
    """The body of every service's Alembic ``env.py``."""
    target = [service_metadata, messaging_metadata]
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set; run migrations through ticketing_common.migrations"
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return

    def migrate(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=target, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as connection:
            # Replicas starting together (a rolling update's initContainers) migrate one at a
            # time; the later ones then find nothing left to do. A session-level lock, so it
            # outlives the transactions Alembic opens and commits.
            lock = {"key": MIGRATION_LOCK_KEY}
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), lock)
            await connection.commit()
            try:
                await connection.run_sync(migrate)
            finally:
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), lock)
                await connection.commit()
        await engine.dispose()

    asyncio.run(run())
