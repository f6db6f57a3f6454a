"""``DriverStatement``: a hot statement sent on the session's own asyncpg connection is part of
the session's unit of work, and gives what ``session.execute`` would."""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Enum,
    Integer,
    Numeric,
    Table,
    Text,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ticketing_common.db import DriverStatement, make_metadata, transaction


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


metadata = make_metadata()
things = Table(
    "driver_statement_things",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", Text, nullable=False),
    Column("price", Numeric(9, 2), nullable=False),
    Column(
        "colour", Enum(Colour, native_enum=False, values_callable=lambda c: [x.value for x in c])
    ),
    Column("details", JSONB, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("version", Integer, nullable=False),
)
ADD = insert(things).values(
    {name: bindparam(name) for name in ("id", "name", "price", "colour", "details", "at")}
    | {"version": 0}
)
ADD_RETURNING = ADD.returning(*things.c)
BUMP_ALL = (
    update(things)
    .where(things.c.id == func.any(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))))
    .values(version=things.c.version + 1)
    .returning(things.c.id, things.c.version)
)
COUNT = select(func.count()).select_from(things)


@pytest.fixture
async def tables(engine: AsyncEngine) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)


def a_thing(name: str = "lamp") -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "name": name,
        "price": Decimal("12.50"),
        "colour": Colour.BLUE,
        "details": {"size": [1, 2], "note": "é"},
        "at": datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
    }


async def count(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(COUNT) or 0)


async def test_as_the_first_statement_it_commits_and_rolls_back_with_the_session(
    tables: None, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The session begins its transaction lazily: a statement sent around SQLAlchemy must
    begin it, or it would commit on its own and survive a rollback."""
    add = DriverStatement(ADD)
    async with sessionmaker() as session:
        await add.all(session, a_thing("rolled back"))
        await session.rollback()
    assert await count(sessionmaker) == 0

    async with transaction(sessionmaker) as session:
        await add.all(session, a_thing("committed"))
    assert await count(sessionmaker) == 1


async def test_it_shares_the_transaction_with_the_session_statements_and_savepoints(
    tables: None, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    add = DriverStatement(ADD)
    async with sessionmaker() as session:
        await session.execute(ADD, a_thing("through the session"))
        await add.all(session, a_thing("on the driver"))
        assert await session.scalar(COUNT) == 2  # each sees the other's write
        savepoint = await session.begin_nested()
        await add.all(session, a_thing("in a savepoint"))
        await savepoint.rollback()
        assert await session.scalar(COUNT) == 2
        await session.commit()
    assert await count(sessionmaker) == 2


async def test_values_and_rows_are_those_the_session_gives(
    tables: None, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Each type's conversions both ways (JSONB, an enum, numbers, times, arrays), by name and
    by position, for one row and for several."""
    ours, theirs = a_thing("ours"), a_thing("theirs")
    async with transaction(sessionmaker) as session:
        (driver_row,) = await DriverStatement(ADD_RETURNING).all(session, ours)
        session_row = (await session.execute(ADD_RETURNING, theirs)).one()
        assert driver_row._asdict() == {**ours, "version": 0}
        assert session_row._asdict() == {**theirs, "version": 0}
        assert [type(value) for value in driver_row] == [type(value) for value in session_row]
        assert driver_row.colour is Colour.BLUE and driver_row.details == ours["details"]

        bumped = await DriverStatement(BUMP_ALL).all(session, {"ids": [ours["id"], theirs["id"]]})
        assert sorted((row.id, row.version) for row in bumped) == sorted(
            [(ours["id"], 1), (theirs["id"], 1)]
        )
        assert await DriverStatement(BUMP_ALL).one_or_none(session, {"ids": []}) is None


async def test_one_or_none_refuses_several_rows(
    tables: None, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with transaction(sessionmaker) as session:
        first, second = a_thing("first"), a_thing("second")
        await DriverStatement(ADD).all(session, first)
        await DriverStatement(ADD).all(session, second)
        with pytest.raises(ValueError, match="2 rows"):
            await DriverStatement(BUMP_ALL).one_or_none(
                session, {"ids": [first["id"], second["id"]]}
            )
