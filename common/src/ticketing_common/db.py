"""Database helpers: the async engine, the unit of work, naming conventions.

A unit of work is one session in one transaction, owned by the entry point: the request's
``SessionDep`` on HTTP paths, the consumer runner (``messaging.consumer``: one event, or a batch
of events of different entities) on event paths. Service functions read, change and ``publish``
in the session they are given; they never commit. The statements every request or event runs
are ``DriverStatement``s: built once, sent on the session's own connection, in its transaction.
"""

from __future__ import annotations

import contextlib
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import MetaData, Text, bindparam, event, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

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


async def driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under ``session``, its transaction begun: what is sent on it is
    part of the session's unit of work, committed or rolled back with it (or with the savepoint
    open). Looked up once per (sub)transaction: a unit of work runs several statements on it."""
    transaction = innermost_transaction(session)
    known = session.info.get(_DRIVER_CONNECTION)
    if known is not None and transaction is not None and known[0] is transaction:
        driver: asyncpg.Connection = known[1]
        return driver
    # Also sends a savepoint begun since the last statement: SQLAlchemy sends it lazily too.
    connection = await session.connection()
    pooled = await connection.get_raw_connection()
    adapted: Any = pooled.dbapi_connection
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily, before its own first statement, and ends
    # only the transaction it began: one sent around it must begin it the same way.
    if adapted._transaction is None:
        await adapted._start_transaction()
    driver = pooled.driver_connection
    session.info[_DRIVER_CONNECTION] = (innermost_transaction(session), driver)
    return driver


def innermost_transaction(session: AsyncSession | Session) -> object:
    """The savepoint open in ``session``, else its transaction (None before it begins). Of an
    ``AsyncSession``, its own proxies; of its ``sync_session``, what SQLAlchemy's session
    events are given."""
    return session.get_nested_transaction() or session.get_transaction()


# The session's key for (its transaction, that transaction's asyncpg connection).
_DRIVER_CONNECTION = "driver_connection"


_DRIVER_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]
_Processor = Callable[[Any], Any] | None


class DriverStatement:
    """A Core statement compiled once for asyncpg, run on the session's own connection (in its
    transaction) with the same values and results as ``session.execute`` would give, but none
    of SQLAlchemy's work per statement. Measured: that work costs about a quarter of a
    millisecond of CPU per statement, as much as the rest of a unit of work; so the statements
    every request or event runs take this way, and everything else goes through the session.

    Rows have attribute access, like SQLAlchemy's. Like any Core statement run through the
    session, it neither flushes the ORM's pending changes first nor updates its loaded objects.
    Its errors are asyncpg's own, not wrapped in SQLAlchemy's (``connection_lost`` knows both).
    """

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_DRIVER_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        binds = [compiled.binds[name] for name in compiled.positiontup or ()]
        self._arguments: list[tuple[str, _Processor]] = [
            (bind.key, bind.type.dialect_impl(_DRIVER_DIALECT).bind_processor(_DRIVER_DIALECT))
            for bind in binds
        ]
        self._defaults = {bind.key: bind.effective_value for bind in binds if not bind.required}
        self._columns: Sequence[Any] = list(getattr(statement, "exported_columns", ()))
        # Known once the server has described the statement's result (a type's processor can
        # depend on the type the server sends): at its first run.
        self._results: list[_Processor] | None = None
        self._driver_values_as_they_are = False
        self._row_type: Any = None

    async def all(
        self, session: AsyncSession, params: Mapping[str, Any] | None = None
    ) -> list[Any]:
        return await self.all_on(await driver_connection(session), params)

    async def all_on(
        self, connection: asyncpg.Connection, params: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """``all`` on an asyncpg connection of the caller's own, in whatever transaction it is
        in. One made by ``asyncpg.connect`` lacks the codecs SQLAlchemy sets on its own: a json
        or jsonb column comes back as text (cast it to text in the statement, to be plain)."""
        values = {**self._defaults, **params} if params else self._defaults
        arguments = [
            values[name] if process is None else process(values[name])
            for name, process in self._arguments
        ]
        if self._results is None:
            await self._describe(connection)
        records = await connection.fetch(self.sql, *arguments)
        return [self._row(record) for record in records]

    async def one_or_none(
        self, session: AsyncSession, params: Mapping[str, Any] | None = None
    ) -> Any:
        rows = await self.all(session, params)
        if len(rows) > 1:
            raise ValueError(f"{len(rows)} rows where one at most was expected")
        return rows[0] if rows else None

    async def one(self, session: AsyncSession, params: Mapping[str, Any] | None = None) -> Any:
        row = await self.one_or_none(session, params)
        if row is None:
            raise ValueError("no row where one was expected")
        return row

    async def _describe(self, connection: asyncpg.Connection) -> None:
        attributes = (await connection.prepare(self.sql)).get_attributes()
        self._row_type = namedtuple(  # type: ignore[misc]
            "Row", [attribute.name for attribute in attributes], rename=True
        )
        self._results = [
            column.type.dialect_impl(_DRIVER_DIALECT).result_processor(
                _DRIVER_DIALECT, attribute.type.oid
            )
            for column, attribute in zip(self._columns, attributes, strict=True)
        ]
        self._driver_values_as_they_are = not any(self._results)

    def _row(self, record: asyncpg.Record) -> Any:
        if self._driver_values_as_they_are:
            return self._row_type._make(record)
        return self._row_type._make(
            value if process is None else process(value)
            for value, process in zip(record, self._results or (), strict=True)
        )


async def advisory_xact_lock(session: AsyncSession, key: str) -> None:
    """Serialise work on ``key`` across every replica until the transaction ends.

    For what a row lock cannot cover: a row that may not exist yet, or no row at all.
    """
    await advisory_xact_locks(session, [key])


async def advisory_xact_locks(session: AsyncSession, keys: Iterable[str]) -> None:
    """``advisory_xact_lock`` on several keys, in one statement. Taken in the keys' sorted
    order, as every caller takes them: two callers never each hold a key the other waits for."""
    await _ADVISORY_XACT_LOCKS.all(session, {"keys": sorted(keys)})


# Built once, like every statement on a path each event or request takes: composing one costs
# more CPU than PostgreSQL spends running it. One lock per element, in the array's order.
_LOCK_KEY = func.unnest(bindparam("keys", type_=ARRAY(Text))).column_valued("key")
_ADVISORY_XACT_LOCKS = DriverStatement(
    select(func.pg_advisory_xact_lock(func.hashtextextended(_LOCK_KEY, 0)))
)


def constraint_name(exc: BaseException) -> str | None:
    """The name of the constraint an IntegrityError broke (asyncpg reports it)."""
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) or orig
    return getattr(cause, "constraint_name", None)
