"""Tickets: the rules, apart from HTTP and from the broker.

Each function works in the caller's unit of work (the request's, or the consumer's for an
event) and never commits: the entry point does.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from sqlalchemy import any_, bindparam, exists, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from ticketing_common.db import DriverStatement
from ticketing_common.errors import BadRequestError, ForbiddenError, NotFoundError
from ticketing_common.events import OrderCancelled, OrderCreated, TicketCreated, TicketUpdated
from ticketing_common.messaging import Outgoing, Received, RetryLater, publish, publish_all
from tickets.models import Base, CancelledOrder, Ticket

log = logging.getLogger(__name__)


class TicketNotFoundError(NotFoundError):
    message = "Ticket not found"


class NotTicketOwnerError(ForbiddenError):
    message = "You do not own this ticket"


class TicketReservedError(BadRequestError):
    message = "Ticket is reserved and cannot be edited"


class InvalidCursorError(BadRequestError):
    message = "Invalid cursor"
    field = "cursor"


class _TicketState(Protocol):
    """What ticket.updated tells of a ticket: a loaded ``Ticket``, or a row a statement gave."""

    id: uuid.UUID
    version: int
    title: str
    price: Decimal
    user_id: uuid.UUID
    order_id: uuid.UUID | None


def _updated_event(
    ticket: _TicketState, refused_order_id: uuid.UUID | None = None
) -> TicketUpdated:
    return TicketUpdated(
        id=ticket.id,
        version=ticket.version,
        title=ticket.title,
        price=ticket.price,
        user_id=ticket.user_id,
        order_id=ticket.order_id,
        refused_order_id=refused_order_id,
    )


async def create_ticket(
    session: AsyncSession, user_id: uuid.UUID, title: str, price: Decimal
) -> Ticket:
    ticket = Ticket(
        id=uuid.uuid4(), title=title, price=price, user_id=user_id, order_id=None, version=0
    )
    # A plain INSERT: the answer needs nothing back from the row, so the ORM's unit of work
    # (and its RETURNING of the server defaults) would be cost without use.
    row = {"id": ticket.id, "title": title, "price": price, "user_id": user_id, "version": 0}
    await _INSERT_TICKET.all(session, row)
    await publish(
        session,
        TicketCreated(id=ticket.id, version=0, title=title, price=price, user_id=user_id),
    )
    return ticket


# The tables, for the statements built once below: composing a statement per request or event
# cost more CPU than PostgreSQL spends running it.
_TICKETS = Base.metadata.tables[Ticket.__tablename__]
_TOMBSTONES = Base.metadata.tables[CancelledOrder.__tablename__]
# Run with each ticket's row (the columns the row names).
_INSERT_TICKET = DriverStatement(
    _TICKETS.insert().values(
        {name: bindparam(name) for name in ("id", "title", "price", "user_id", "version")}
    )
)


async def get_ticket(session: AsyncSession, ticket_id: uuid.UUID) -> Ticket:
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None:
        raise TicketNotFoundError()
    return ticket


async def _lock_ticket(session: AsyncSession, ticket_id: uuid.UUID) -> Ticket | None:
    """The ticket, row-locked until commit: a PUT and a reservation never overwrite each other."""
    ticket: Ticket | None = await session.scalar(_LOCK_TICKET, {"ticket_id": ticket_id})
    return ticket


# Built once (every reservation takes them): composing a statement costs more CPU than running it.
_LOCK_TICKET = select(Ticket).where(Ticket.id == bindparam("ticket_id")).with_for_update()
_TOMBSTONE = select(CancelledOrder.order_id).where(CancelledOrder.order_id == bindparam("order_id"))


async def update_ticket(
    session: AsyncSession, user_id: uuid.UUID, ticket_id: uuid.UUID, title: str, price: Decimal
) -> Ticket:
    ticket = await _lock_ticket(session, ticket_id)
    if ticket is None:
        raise TicketNotFoundError()
    if ticket.user_id != user_id:
        raise NotTicketOwnerError()
    if ticket.order_id is not None:
        raise TicketReservedError()
    ticket.title = title
    ticket.price = price
    ticket.version += 1
    await publish(session, _updated_event(ticket))
    return ticket


async def _ticket_of_order(
    session: AsyncSession, ticket_id: uuid.UUID, order_id: uuid.UUID
) -> Ticket:
    ticket = await _lock_ticket(session, ticket_id)
    if ticket is None:
        # Orders only sells tickets it heard of from us: this is a fault, retried then parked.
        raise LookupError(f"order {order_id} is for unknown ticket {ticket_id}")
    return ticket


async def reserve(
    session: AsyncSession, ticket_id: uuid.UUID, *, order_id: uuid.UUID, price: Decimal
) -> None:
    """Hold the ticket for an order, and announce it. An order cancelled before it reached us
    (its tombstone is here) reserves nothing; a ticket still held by an earlier order waits for
    that order's cancellation. An order priced before the ticket's last price change is
    refused, and the refusal announced (orders cancels it): the buyer pays today's price."""
    ticket = await _ticket_of_order(session, ticket_id, order_id)
    if ticket.order_id == order_id:
        return
    if ticket.order_id is not None:
        if await session.scalar(_TOMBSTONE, {"order_id": order_id}) is None:
            raise RetryLater(f"ticket {ticket.id} is still held by order {ticket.order_id}")
        log.info("order %s was cancelled before it reached us; not reserving", order_id)
        return
    refused = ticket.price != price
    # The tombstone check and the change in one statement, under the row lock taken above: its
    # snapshot, taken after that wait, sees a tombstone committed meanwhile.
    changed = await _RESERVE_ALL_UNLESS_CANCELLED.one_or_none(
        session,
        {
            "ticket_ids": [ticket.id],
            "order_ids": [order_id],
            "held_by": [None if refused else order_id],
        },
    )
    if changed is None:
        log.info("order %s was cancelled before it reached us; not reserving", order_id)
        return
    # The row changed under the ORM's copy: set it to what was written, as written (no flush).
    set_committed_value(ticket, "version", changed.version)
    set_committed_value(ticket, "order_id", None if refused else order_id)
    if refused:
        log.info(
            "order %s priced at %s, ticket %s costs %s: refused",
            order_id,
            price,
            ticket.id,
            ticket.price,
        )
        await publish(session, _updated_event(ticket, refused_order_id=order_id))
        return
    await publish(session, _updated_event(ticket))


async def reserve_all(
    session: AsyncSession, orders: list[Received[OrderCreated]]
) -> list[Received[OrderCreated]]:
    """``reserve`` for several orders of different tickets at once, in three statements: the
    usual case, a free ticket at the order's price. Returns the orders left to ``reserve``
    (a ticket held, already theirs, missing, or priced otherwise)."""
    by_ticket = {received.event.ticket.id: received for received in orders}
    if len(by_ticket) < len(orders):  # never from the runner (one ticket, one lane): one by one
        return orders
    # Locked in the order of their ids, as every batch locks them: two batches never deadlock.
    tickets = await _LOCK_TICKETS.all(session, {"ticket_ids": sorted(by_ticket)})
    free = [
        ticket
        for ticket in tickets
        if ticket.order_id is None and ticket.price == by_ticket[ticket.id].event.ticket.price
    ]
    if not free:
        return orders
    # The tombstone checks and the changes, under the locks taken above (see reserve()).
    reserved = {
        row.id: row
        for row in await _RESERVE_ALL_UNLESS_CANCELLED.all(
            session,
            {
                "ticket_ids": [ticket.id for ticket in free],
                "order_ids": [by_ticket[ticket.id].event.id for ticket in free],
                "held_by": [by_ticket[ticket.id].event.id for ticket in free],
            },
        )
    }
    announced = []
    for ticket in free:
        received = by_ticket[ticket.id]
        if ticket.id not in reserved:
            log.info(
                "order %s was cancelled before it reached us; not reserving", received.event.id
            )
            continue
        # The row as the statement left it: its new version, held by the order.
        event = _updated_event(reserved[ticket.id])
        announced.append(Outgoing(event, request_id=received.request_id))
    if announced:
        await publish_all(session, announced)
    taken = {ticket.id for ticket in free}
    return [received for received in orders if received.event.ticket.id not in taken]


_LOCK_TICKETS = DriverStatement(
    select(_TICKETS)
    .where(_TICKETS.c.id == any_(bindparam("ticket_ids", type_=ARRAY(UUID(as_uuid=True)))))
    .order_by(_TICKETS.c.id)
    .with_for_update()
)
_RESERVING = select(
    func.unnest(bindparam("ticket_ids", type_=ARRAY(UUID(as_uuid=True)))).label("ticket_id"),
    func.unnest(bindparam("order_ids", type_=ARRAY(UUID(as_uuid=True)))).label("order_id"),
    func.unnest(bindparam("held_by", type_=ARRAY(UUID(as_uuid=True)))).label("held_by"),
).subquery("reserving")
# Each ticket takes the next version and is held by ``held_by``, unless the order has a
# tombstone. A refusal (``held_by`` null) takes a version too: orders waits for every version.
_RESERVE_ALL_UNLESS_CANCELLED = DriverStatement(
    update(_TICKETS)
    .where(
        _TICKETS.c.id == _RESERVING.c.ticket_id,
        ~exists().where(_TOMBSTONES.c.order_id == _RESERVING.c.order_id),
    )
    .values(version=_TICKETS.c.version + 1, order_id=_RESERVING.c.held_by)
    .returning(*_TICKETS.c)
)


async def release(session: AsyncSession, ticket_id: uuid.UUID, *, order_id: uuid.UUID) -> None:
    """The order is cancelled: free its ticket and announce it. If the ticket is not held by
    it (its order.created is still on its way), leave a tombstone for that event to find."""
    ticket = await _ticket_of_order(session, ticket_id, order_id)
    if ticket.order_id != order_id:
        await session.execute(
            insert(CancelledOrder)
            .values(order_id=order_id, ticket_id=ticket.id)
            .on_conflict_do_nothing()
        )
        return
    ticket.order_id = None
    ticket.version += 1
    await publish(session, _updated_event(ticket))


async def release_all(
    session: AsyncSession, cancellations: list[Received[OrderCancelled]]
) -> list[Received[OrderCancelled]]:
    """``release`` for several orders of different tickets at once, in three statements: the
    usual case, a ticket held by the cancelled order. Returns the cancellations left to
    ``release`` (a ticket not held by its order: a tombstone is left there)."""
    by_ticket = {received.event.ticket.id: received for received in cancellations}
    if len(by_ticket) < len(cancellations):  # never from the runner (one ticket, one lane)
        return cancellations
    # Locked in the order of their ids, as every batch locks them (see reserve_all).
    await _LOCK_TICKETS.all(session, {"ticket_ids": sorted(by_ticket)})
    released = await _RELEASE_HELD.all(
        session,
        {
            "ticket_ids": list(by_ticket),
            "order_ids": [received.event.id for received in by_ticket.values()],
        },
    )
    if released:
        await publish_all(
            session,
            [
                Outgoing(_updated_event(row), request_id=by_ticket[row.id].request_id)
                for row in released
            ],
        )
    done = {row.id for row in released}
    return [received for received in cancellations if received.event.ticket.id not in done]


_RELEASING = select(
    func.unnest(bindparam("ticket_ids", type_=ARRAY(UUID(as_uuid=True)))).label("ticket_id"),
    func.unnest(bindparam("order_ids", type_=ARRAY(UUID(as_uuid=True)))).label("order_id"),
).subquery("releasing")
# Each ticket still held by its cancelled order is freed and takes the next version.
_RELEASE_HELD = DriverStatement(
    update(_TICKETS)
    .where(_TICKETS.c.id == _RELEASING.c.ticket_id, _TICKETS.c.order_id == _RELEASING.c.order_id)
    .values(version=_TICKETS.c.version + 1, order_id=None)
    .returning(*_TICKETS.c)
)


@dataclass(frozen=True)
class Cursor:
    """Where a page of the available list resumes: after this (created_at, id)."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
            created_at, ticket_id = raw.split("|")
            when = datetime.fromisoformat(created_at)
            if when.tzinfo is None:
                raise ValueError("cursor time without a zone")
            # In UTC, as PostgreSQL will compare it: year 1 at +05:00 falls off the calendar.
            return cls(when.astimezone(UTC), uuid.UUID(ticket_id))
        except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
            raise InvalidCursorError() from exc


async def list_available(
    session: AsyncSession, limit: int, after: Cursor | None
) -> tuple[list[Ticket], Cursor | None]:
    """One page of unreserved tickets, newest first, and the cursor of the next page if any."""
    query = select(Ticket).where(Ticket.order_id.is_(None))
    if after is not None:
        query = query.where(tuple_(Ticket.created_at, Ticket.id) < (after.created_at, after.id))
    query = query.order_by(Ticket.created_at.desc(), Ticket.id.desc()).limit(limit + 1)
    tickets = list((await session.scalars(query)).all())
    if len(tickets) <= limit:
        return tickets, None
    last = tickets[limit - 1]
    return tickets[:limit], Cursor(last.created_at, last.id)
