"""Parked events: those whose handler kept failing, and the later events of their entity.

An entity is never frozen by one parked event, nor changed out of order around it: while an
event of an entity is parked, each later event of that entity is parked too, as waiting behind
the first (``waiting_behind``). ``parked replay`` runs the first and then those behind it, in
the order they were parked. Both sides take a transaction-scoped advisory lock on the entity,
so an event arriving during a replay either waits behind a row the replay still reads, or
finds the entity clear.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, case, delete, func, literal, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from ticketing_common.db import advisory_xact_lock, transaction
from ticketing_common.messaging.tables import parked_events
from ticketing_common.observability import REQUEST_ID_HEADER, request_id_var

log = logging.getLogger(__name__)

# Runs one parked envelope's handler with its inbox entry (the consumer's unit of work).
Apply = Callable[[dict[str, Any]], Awaitable[None]]


async def _first_parked(session: AsyncSession, entity_key: str) -> Row[Any] | None:
    return (
        await session.execute(
            select(parked_events)
            .where(parked_events.c.entity_key == entity_key)
            .order_by(parked_events.c.position)
            .limit(1)
        )
    ).first()


@dataclass(frozen=True)
class Parkable:
    """An event as the parked table keeps it."""

    event_id: uuid.UUID
    subject: str
    envelope: dict[str, Any]  # as it arrived
    headers: dict[str, str]
    entity_key: str | None  # None for a malformed event: nothing can wait behind it

    def row(self, *, error: str, failures: int, waiting_behind: uuid.UUID | None = None) -> Any:
        return insert(parked_events).values(
            event_id=self.event_id,
            subject=self.subject,
            envelope=self.envelope,
            headers=self.headers,
            entity_key=self.entity_key,
            error=error[:4000],
            deliveries=failures,
            waiting_behind=waiting_behind,
        )


async def park(
    sessionmaker: async_sessionmaker[AsyncSession], event: Parkable, *, error: str, failures: int
) -> None:
    """Park an event whose handler failed (or that cannot be read), and say so at error level."""
    async with transaction(sessionmaker) as session:
        await session.execute(
            event.row(error=error, failures=failures).on_conflict_do_update(
                index_elements=[parked_events.c.event_id],
                set_={"error": error[:4000], "deliveries": failures},
            )
        )
    log.error(
        "parked event %s on %s (%s) after %d failures: %s",
        event.event_id,
        event.subject,
        event.entity_key,
        failures,
        error,
    )


async def park_if_held(sessionmaker: async_sessionmaker[AsyncSession], event: Parkable) -> bool:
    """Park the event behind its entity's first parked event, if it has one: True if parked."""
    assert event.entity_key is not None
    async with transaction(sessionmaker) as session:
        await advisory_xact_lock(session, event.entity_key)
        first = await _first_parked(session, event.entity_key)
        if first is None or first.event_id == event.event_id:
            return False
        await session.execute(
            event.row(
                error=f"waiting behind {first.event_id}", failures=0, waiting_behind=first.event_id
            ).on_conflict_do_nothing()
        )
    log.error(
        "parked event %s on %s: %s is waiting behind parked event %s",
        event.event_id,
        event.subject,
        event.entity_key,
        first.event_id,
    )
    return True


async def list_parked(sessionmaker: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    async with sessionmaker() as session:
        rows = await session.execute(select(parked_events).order_by(parked_events.c.position))
        return [dict(row._mapping) for row in rows]


async def count_parked(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).select_from(parked_events)) or 0)


async def replay_parked(
    sessionmaker: async_sessionmaker[AsyncSession], event_id: uuid.UUID, apply: Apply
) -> bool:
    """Replay a parked event's entity: its first parked event, then those waiting behind it.

    Each event that applies leaves the table. If one fails again, it stays (with the new error)
    and is now the first of its entity, the rest still waiting behind it: returns False.
    """
    async with sessionmaker() as session:
        row = (
            await session.execute(select(parked_events).where(parked_events.c.event_id == event_id))
        ).first()
    if row is None:
        raise LookupError(f"no parked event {event_id}")
    entity_key: str | None = row.entity_key
    while True:
        if entity_key is not None:
            async with transaction(sessionmaker) as session:
                await advisory_xact_lock(session, entity_key)
                row = await _first_parked(session, entity_key)
            if row is None:
                return True
        try:
            await _apply_with_request_id(row, apply)
        except Exception as exc:
            await _record_replay_failure(sessionmaker, row, exc)
            return False
        async with transaction(sessionmaker) as session:
            await session.execute(
                delete(parked_events).where(parked_events.c.event_id == row.event_id)
            )
        if entity_key is None:
            return True


async def _apply_with_request_id(row: Row[Any], apply: Apply) -> None:
    token = request_id_var.set(row.headers.get(REQUEST_ID_HEADER))
    try:
        await apply(row.envelope)
    finally:
        request_id_var.reset(token)


async def _record_replay_failure(
    sessionmaker: async_sessionmaker[AsyncSession], row: Row[Any], exc: Exception
) -> None:
    failed = parked_events.c.event_id == row.event_id
    async with transaction(sessionmaker) as session:
        await session.execute(
            parked_events.update().where(failed).values(error=f"replay failed: {exc!r}"[:4000])
        )
        if row.entity_key is not None:
            # It is the first of its entity now: the others wait behind it.
            await session.execute(
                parked_events.update()
                .where(parked_events.c.entity_key == row.entity_key)
                .values(
                    waiting_behind=case(
                        (failed, None), else_=literal(row.event_id, parked_events.c.event_id.type)
                    )
                )
            )
