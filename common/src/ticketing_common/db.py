"""Database helpers: the async engine, the unit of work, naming conventions.

A unit of work is one session in one transaction, owned by the entry point: the request's
``SessionDep`` on HTTP paths, the consumer runner (``messaging.consumer``: one event, or a batch
of events of different entities) on event paths. Service functions read, change and ``publish``
in the session they are given; they never commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import MetaData, Text, bindparam, event, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

# Stable constraint names, so migrations can refer to them and errors can be matched on them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def make_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(database_url: str, *, pool_size: int = 20) -> AsyncEngine:
    # Every connection the pool opens, it keeps (no overflow): a connection opened for a busy
    # moment and closed right after would cost a PostgreSQL backend's start, the TLS probe and
    # every statement's preparation again, on each burst.
    # No pool_pre_ping: it costs three round trips (BEGIN, a ping, ROLLBACK) per checkout,
    # as many as an event's whole unit of work. A closed connection is refused for free instead.
    engine = create_async_engine(database_url, pool_size=pool_size, max_overflow=0)
    event.listen(engine.sync_engine, "checkout", _refuse_closed_connection)
    return engine


def _refuse_closed_connection(
    dbapi_connection: object, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    """A pooled connection the server closed (PostgreSQL restarted, its backend terminated) is
    replaced on checkout: the driver saw the socket close while the connection sat idle, so
    asking it costs no round trip. One lost in the instant before checkout fails its statement,
    which SQLAlchemy reports as a disconnect and which invalidates the pool's older connections."""
    if record.driver_connection is not None and record.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


# What asyncpg raises when the server went away or will not take connections now: its
# connection-level errors (SQLSTATE class 08), a shutdown (57P01 admin, 57P02 crash) or a start
# (57P03) in progress; and refused, reset or broken sockets. Not a cancelled statement (57014).
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
)


def connection_lost(exc: BaseException) -> bool:
    """``exc`` itself says the database is out of reach, not that a statement was wrong (the
    callers walk the chain of what wraps what)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, _CONNECTION_LOST):
        return True
    # asyncpg's word for a connection closed under it (by a terminated backend's socket).
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: committed when the block ends, rolled back if it raises."""
    async with sessionmaker() as session:
        yield session
        await session.commit()


async def request_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return sessionmaker


# For a route whose work must span several units (never a transaction held open across a slow
# step: a payment provider's call, a password hash); every other route takes SessionDep.
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(request_sessionmaker)]


# Takes the request, not SessionmakerDep: each dependency FastAPI resolves costs a request
# more than the lookup does.
async def request_transaction(request: Request) -> AsyncIterator[AsyncSession]:
    async with transaction(await request_sessionmaker(request)) as session:
        yield session


# The request's unit of work. scope="function": committed as the route returns, before the
# response is sent, so a client that got its 201 finds the row; an error rolls it back.
SessionDep = Annotated[AsyncSession, Depends(request_transaction, scope="function")]


async def advisory_xact_lock(session: AsyncSession, key: str) -> None:
    """Serialise work on ``key`` across every replica until the transaction ends.

    For what a row lock cannot cover: a row that may not exist yet, or no row at all.
    """
    await advisory_xact_locks(session, [key])


async def advisory_xact_locks(session: AsyncSession, keys: Iterable[str]) -> None:
    """``advisory_xact_lock`` on several keys, in one statement. Taken in the keys' sorted
    order, as every caller takes them: two callers never each hold a key the other waits for."""
    await session.execute(_ADVISORY_XACT_LOCKS, {"keys": sorted(keys)})


# Built once, like every statement on a path each event or request takes: composing one costs
# more CPU than PostgreSQL spends running it. One lock per element, in the array's order.
_LOCK_KEY = func.unnest(bindparam("keys", type_=ARRAY(Text))).column_valued("key")
_ADVISORY_XACT_LOCKS = select(func.pg_advisory_xact_lock(func.hashtextextended(_LOCK_KEY, 0)))


def constraint_name(exc: BaseException) -> str | None:
    """The name of the constraint an IntegrityError broke (asyncpg reports it)."""
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) or orig
    return getattr(cause, "constraint_name", None)
