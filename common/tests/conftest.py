from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ticketing_common.db import make_engine, make_sessionmaker
from ticketing_common.messaging.tables import messaging_metadata
from ticketing_common.testing import TestDatabase
from ticketing_common.testing.stand_ins import effects_metadata


@pytest.fixture(scope="session")
async def common_db(postgres_url: str) -> TestDatabase:
    database = await TestDatabase.create(postgres_url, "common")
    engine = make_engine(database.url)
    async with engine.begin() as conn:
        await conn.run_sync(messaging_metadata.create_all)
        await conn.run_sync(effects_metadata.create_all)
    await engine.dispose()
    return database


@pytest.fixture
async def engine(common_db: TestDatabase) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(common_db.url)
    yield engine
    await engine.dispose()
    await common_db.truncate()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)
