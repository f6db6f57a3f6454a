"""Orders: the rules, apart from HTTP and from the broker.

Each function works in the caller's unit of work (the request's, or the consumer's for an
event) and never commits: the entry point does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Integer,
    Numeric,
    Text,
    and_,
    bindparam,
    delete,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from orders.models import LIVE_ORDER, Base, IdempotencyKey, Order, Ticket
from orders.schemas import OrderIn, OrderOut, OrderTicketOut, SaleOut
from ticketing_common.clock import utcnow
from ticketing_common.db import DriverStatement, constraint_name
from ticketing_common.errors import BadRequestError, ForbiddenError, NotFoundError
from ticketing_common.events import (
    ExpirationComplete,
    OrderCancelled,
    OrderCancelledTicket,
    OrderCreated,
    OrderStatus,
    TicketCreated,
    TicketUpdated,
)
from ticketing_common.events import OrderCreatedTicket as EventTicket
from ticketing_common.messaging import Outgoing, Received, RetryLater, publish, publish_all

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_PK = "pk_idempotency_keys"
# How long a stored answer is replayed; an older key counts as never used (as Stripe's do).
IDEMPOTENCY_KEY_TTL = timedelta(hours=24)


class TicketNotFoundError(NotFoundError):
    message = "Ticket not found"
    field = "ticketId"


class TicketReservedError(BadRequestError):
    message = "Ticket is already reserved"
    field = "ticketId"


class OwnTicketError(BadRequestError):
    message = "You cannot buy your own ticket"
    field = "ticketId"


class IdempotencyKeyReusedError(BadRequestError):
    message = "Idempotency-Key was already used with a different request"
    field = "Idempotency-Key"


class OrderNotFoundError(NotFoundError):
    message = "Order not found"


class NotOrderOwnerError(ForbiddenError):
    message = "This order is not yours"


# Told to the buyer when tickets refused the reservation: the price changed as they ordered.
TICKET_CHANGED = "ticket changed, order again"


class OrderCompleteError(BadRequestError):
    message = "Order is already complete and cannot be cancelled"


def order_out(order: Order) -> OrderOut:
    """The order with its ticket as ordered (the snapshot, not today's replica)."""
    return OrderOut(
        id=order.id,
        status=order.status,
        user_id=order.user_id,
        expires_at=order.expires_at,
        version=order.version,
        ticket=OrderTicketOut(
            id=order.ticket_id, title=order.ticket_title, price=order.ticket_price
        ),
        cancel_reason=order.cancel_reason,
    )


class Answer:
    """What POST /api/orders answers: a new order, or the stored first answer to a retry."""

    def __init__(self, status_code: int, body: dict[str, Any], replayed: bool) -> None:
        self.status_code = status_code
        self.body = body
        self.replayed = replayed


async def _stored_answer(
    session: AsyncSession, user_id: uuid.UUID, key: str, request_hash: str
) -> Answer | None:
    stored = await session.get(IdempotencyKey, (user_id, key))
    if stored is None:
        return None
    if stored.created_at < utcnow() - IDEMPOTENCY_KEY_TTL:
        # Expired: forget it so this request is answered afresh and stored under the key.
        # A concurrent twin blocks on this delete, then loses on the primary key and gets
        # our answer.
        session.expunge(stored)
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.user_id == user_id,
                IdempotencyKey.key == key,
                IdempotencyKey.created_at == stored.created_at,
            )
        )
        return None
    if stored.request_hash != request_hash:
        raise IdempotencyKeyReusedError()
    return Answer(stored.status_code, stored.response, replayed=True)


async def create_order(
    session: AsyncSession,
    user_id: uuid.UUID,
    request: OrderIn,
    *,
    expires_at: datetime,
    idempotency_key: str | None = None,
) -> Answer:
    """Reserve a ticket until ``expires_at``. With an idempotency key, a retry gets the first
    answer back.

    Only a created order is remembered under the key: a refusal changed nothing, so a retry
    simply asks again (and may succeed once, say, the ticket is released).
    """
    request_hash = ""
    if idempotency_key is not None:
        request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        stored = await _stored_answer(session, user_id, idempotency_key, request_hash)
        if stored is not None:
            return stored

    order_id = uuid.uuid4()
    # A second try only when the reason the first found nothing has gone by the time it is
    # asked: the ticket reached our replica, or its order ended, between the two statements.
    for _ in range(2):
        created = await _insert_order_and_key(
            session, order_id, user_id, request.ticket_id, expires_at, idempotency_key, request_hash
        )
        if created is not None:
            break
        if idempotency_key is not None:
            # A twin of this request may have won: it holds the ticket, or stored the key.
            stored = await _stored_answer(session, user_id, idempotency_key, request_hash)
            if stored is not None:
                return stored
        await _refuse(session, user_id, request.ticket_id)
    else:
        raise TicketReservedError()
    await publish(
        session,
        OrderCreated(
            id=order_id,
            version=0,
            status=OrderStatus.CREATED,
            user_id=user_id,
            expires_at=expires_at,
            ticket=EventTicket(id=request.ticket_id, price=created.price),
        ),
    )
    return Answer(201, created.body, replayed=False)


@dataclass(frozen=True)
class _Created:
    price: Decimal  # the ticket's, as the order took it
    body: dict[str, Any]  # the answer to the request


async def _insert_order_and_key(
    session: AsyncSession,
    order_id: uuid.UUID,
    user_id: uuid.UUID,
    ticket_id: uuid.UUID,
    expires_at: datetime,
    idempotency_key: str | None,
    request_hash: str,
) -> _Created | None:
    """The order and, with a key, the answer stored under it; None if no order was inserted
    (or a twin stored the key first)."""
    try:
        # With a key, a savepoint: a twin that stored the key first undoes only our inserts,
        # and its answer is still ours to give.
        async with session.begin_nested() if idempotency_key else contextlib.nullcontext():
            ticket = await _insert_order(session, order_id, user_id, ticket_id, expires_at)
            if ticket is None:
                return None
            body = _created_body(order_id, user_id, ticket_id, ticket, expires_at)
            if idempotency_key is not None:
                await session.execute(
                    insert(IdempotencyKey).values(
                        user_id=user_id,
                        key=idempotency_key,
                        request_hash=request_hash,
                        status_code=201,
                        response=body,
                    )
                )
            return _Created(ticket[1], body)
    except IntegrityError as exc:
        if constraint_name(exc) != IDEMPOTENCY_KEY_PK or idempotency_key is None:
            raise
        return None


async def _insert_order(
    session: AsyncSession,
    order_id: uuid.UUID,
    user_id: uuid.UUID,
    ticket_id: uuid.UUID,
    expires_at: datetime,
) -> tuple[str, Decimal] | None:
    """The order, in one statement: the ticket is read from the replica as it is inserted;
    nothing is inserted (None) if the ticket is unknown, the buyer's own, or has a live order
    (the unique index decides, whatever the race). Else the ticket's title and price."""
    values = {
        "order_id": order_id,
        "user_id": user_id,
        "ticket_id": ticket_id,
        "expires_at": expires_at,
    }
    row = await _INSERT_ORDER.one_or_none(session, values)
    return None if row is None else (row.ticket_title, row.ticket_price)


def _insert_order_statement() -> ReturningInsert[tuple[str, Decimal]]:
    table = Base.metadata.tables[Order.__tablename__]
    orders, tickets = table.c, Base.metadata.tables[Ticket.__tablename__].c
    snapshot = select(
        bindparam("order_id", type_=orders.id.type),
        bindparam("user_id", type_=orders.user_id.type),
        tickets.id,
        tickets.title,
        tickets.price,
        literal(OrderStatus.CREATED, orders.status.type),
        bindparam("expires_at", type_=orders.expires_at.type),
        literal(0, orders.version.type),
    ).where(tickets.id == bindparam("ticket_id"), tickets.user_id != bindparam("user_id"))
    columns = [
        orders.id,
        orders.user_id,
        orders.ticket_id,
        orders.ticket_title,
        orders.ticket_price,
        orders.status,
        orders.expires_at,
        orders.version,
    ]
    return (
        insert(table)
        .from_select(columns, snapshot, include_defaults=False)
        .on_conflict_do_nothing(index_elements=[orders.ticket_id], index_where=LIVE_ORDER)
        .returning(orders.ticket_title, orders.ticket_price)
    )


# Built once, run with each order's values: composing it per request cost more CPU than
# PostgreSQL spends running it. Core (the tables), so that the values are one row's parameters.
_INSERT_ORDER = DriverStatement(_insert_order_statement())


async def _refuse(session: AsyncSession, user_id: uuid.UUID, ticket_id: uuid.UUID) -> None:
    """Why no order was inserted for ``ticket_id``. Returns if there is no reason any more: the
    ticket reached our replica, or its live order ended, since the insert looked."""
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None:
        # Unknown, or its ticket.created has not reached our replica yet.
        raise TicketNotFoundError()
    if ticket.user_id == user_id:
        raise OwnTicketError()
    live_order = select(Order.id).where(Order.ticket_id == ticket_id, LIVE_ORDER).limit(1)
    if await session.scalar(live_order) is not None:
        raise TicketReservedError()


def _created_body(
    order_id: uuid.UUID,
    user_id: uuid.UUID,
    ticket_id: uuid.UUID,
    ticket: tuple[str, Decimal],
    expires_at: datetime,
) -> dict[str, Any]:
    """The answer to a new order, as ``order_out`` gives it (the row is not read back)."""
    title, price = ticket
    order = Order(
        id=order_id,
        user_id=user_id,
        ticket_id=ticket_id,
        ticket_title=title,
        ticket_price=price,
        status=OrderStatus.CREATED,
        expires_at=expires_at,
        version=0,
    )
    return order_out(order).model_dump(mode="json", by_alias=True)


async def list_orders(session: AsyncSession, user_id: uuid.UUID) -> list[OrderOut]:
    orders = await session.scalars(
        select(Order)
        .where(Order.user_id == user_id)
        .order_by(Order.created_at.desc(), Order.id.desc())
    )
    return [order_out(order) for order in orders]


async def list_sales(session: AsyncSession, seller_id: uuid.UUID) -> list[SaleOut]:
    """The seller's tickets (from our replica) with the state their one live order gives them."""
    rows = await session.execute(
        select(Ticket, Order.status)
        .outerjoin(Order, and_(Order.ticket_id == Ticket.id, Order.status != OrderStatus.CANCELLED))
        .where(Ticket.user_id == seller_id)
        .order_by(Ticket.title, Ticket.id)
    )
    return [
        SaleOut(
            ticket=OrderTicketOut(id=ticket.id, title=ticket.title, price=ticket.price),
            state=(
                "available"
                if status is None
                else "sold"
                if status == OrderStatus.COMPLETE
                else "reserved"
            ),
        )
        for ticket, status in rows
    ]


async def _order(
    session: AsyncSession, order_id: uuid.UUID, *, lock: bool = False, buyer: uuid.UUID | None
) -> Order:
    """The order (of ``buyer``, when one is given); with ``lock``, row-locked until commit, so a
    cancel, an expiry and a payment take turns."""
    query = select(Order).where(Order.id == order_id)
    order = await session.scalar(query.with_for_update() if lock else query)
    if order is None:
        raise OrderNotFoundError()
    if buyer is not None and order.user_id != buyer:
        raise NotOrderOwnerError()
    return order


async def get_order(session: AsyncSession, user_id: uuid.UUID, order_id: uuid.UUID) -> OrderOut:
    return order_out(await _order(session, order_id, buyer=user_id))


async def cancel_order(
    session: AsyncSession,
    order_id: uuid.UUID,
    *,
    buyer: uuid.UUID | None = None,
    reason: str | None = None,
) -> None:
    """Cancel a live order and announce it: by its ``buyer``, or (no buyer) when it expires or
    tickets refused it (``reason`` says why, to the buyer).

    Cancelling a cancelled order changes nothing and publishes nothing. A complete order stays
    complete: its buyer is told so; an expiry that lost the race to a payment does nothing (a
    payment completes an order only once tickets reserved the ticket for it).
    """
    order = await _order(session, order_id, lock=True, buyer=buyer)
    if order.status == OrderStatus.COMPLETE and buyer is not None:
        raise OrderCompleteError()
    if order.status in (OrderStatus.COMPLETE, OrderStatus.CANCELLED):
        return
    order.status = OrderStatus.CANCELLED
    order.cancel_reason = reason
    order.version += 1
    await publish(
        session,
        OrderCancelled(
            id=order.id, version=order.version, ticket=OrderCancelledTicket(id=order.ticket_id)
        ),
    )


async def expire_orders(
    session: AsyncSession, expiries: list[Received[ExpirationComplete]]
) -> list[Received[ExpirationComplete]]:
    """``cancel_order`` for several orders whose time ran out, in two statements: the usual
    case, a live order. Returns the expiries left to ``cancel_order`` (an order complete,
    cancelled already, or unknown)."""
    cancelled = await _EXPIRE_LIVE_ORDERS.all(
        session, {"ids": [received.event.order_id for received in expiries]}
    )
    request_ids = {received.event.order_id: received.request_id for received in expiries}
    announced = [
        Outgoing(
            OrderCancelled(
                id=order.id, version=order.version, ticket=OrderCancelledTicket(id=order.ticket_id)
            ),
            request_id=request_ids[order.id],
        )
        for order in cancelled
    ]
    if announced:
        await publish_all(session, announced)
    done = {order.id for order in cancelled}
    return [received for received in expiries if received.event.order_id not in done]


_ORDERS = Base.metadata.tables[Order.__tablename__]
_EXPIRING = func.unnest(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))).column_valued(
    "expiring_id"
)
# Each row waits for its lock (a payment completing it, say), then checks its status as it is.
_EXPIRE_LIVE_ORDERS = DriverStatement(
    update(_ORDERS)
    .where(_ORDERS.c.id == _EXPIRING, _ORDERS.c.status == OrderStatus.CREATED)
    .values(status=OrderStatus.CANCELLED, version=_ORDERS.c.version + 1)
    .returning(_ORDERS.c.id, _ORDERS.c.version, _ORDERS.c.ticket_id)
)


async def complete_order(session: AsyncSession, order_id: uuid.UUID, payment_id: uuid.UUID) -> None:
    """The order is paid. One cancelled meanwhile stays cancelled: payments refunds it. Until
    tickets has answered the order (reserved the ticket for it, or refused it) the payment
    waits: an order tickets refuses is cancelled, never complete."""
    order = await _order(session, order_id, lock=True, buyer=None)
    if order.status == OrderStatus.CANCELLED:
        log.warning("payment %s for cancelled order %s; not completing", payment_id, order.id)
        return
    if order.status == OrderStatus.COMPLETE:
        return
    ticket = await session.get(Ticket, order.ticket_id)
    if ticket is None or ticket.order_id != order.id:
        raise RetryLater(f"order {order.id}: tickets has not reserved its ticket yet")
    order.status = OrderStatus.COMPLETE
    order.version += 1


async def add_ticket(session: AsyncSession, ticket: TicketCreated) -> None:
    """A new ticket joins the replica (once, however often it is announced)."""
    await session.execute(
        insert(Ticket)
        .values(
            id=ticket.id,
            title=ticket.title,
            price=ticket.price,
            user_id=ticket.user_id,
            version=ticket.version,
        )
        .on_conflict_do_nothing(index_elements=[Ticket.id])
    )


# Built once (every ticket change takes them): composing a statement costs more CPU than running
# it. Core (the table), its values as arrays: one prepared statement for any number of changes.
_LOCK_TICKET = select(Ticket).where(Ticket.id == bindparam("ticket_id")).with_for_update()
_TICKETS = Base.metadata.tables[Ticket.__tablename__]


async def update_tickets(
    session: AsyncSession, changes: list[Received[TicketUpdated]]
) -> list[Received[TicketUpdated]]:
    """``update_ticket`` for several tickets at once, in one statement: the usual case, each
    the next version with no refused order. Returns the changes left to ``update_ticket``
    (an older version, one from the future, a ticket not here yet, a refusal)."""
    usual = [received for received in changes if received.event.refused_order_id is None]
    if not usual:
        return changes
    values: dict[str, list[Any]] = {
        "ids": [],
        "titles": [],
        "prices": [],
        "order_ids": [],
        "versions": [],
    }
    for received in usual:
        change = received.event
        values["ids"].append(change.id)
        values["titles"].append(change.title)
        values["prices"].append(change.price)
        values["order_ids"].append(change.order_id)
        values["versions"].append(change.version)
    applied = {row.id for row in await _APPLY_NEXT_VERSIONS.all(session, values)}
    return [received for received in changes if received.event.id not in applied]


_CHANGING = select(
    func.unnest(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))).label("id"),
    func.unnest(bindparam("titles", type_=ARRAY(Text))).label("title"),
    func.unnest(bindparam("prices", type_=ARRAY(Numeric(9, 2)))).label("price"),
    func.unnest(bindparam("order_ids", type_=ARRAY(UUID(as_uuid=True)))).label("order_id"),
    func.unnest(bindparam("versions", type_=ARRAY(Integer))).label("version"),
).subquery("changing")
# Each row waits for its lock, then checks its version as it is then.
_APPLY_NEXT_VERSIONS = DriverStatement(
    update(_TICKETS)
    .where(_TICKETS.c.id == _CHANGING.c.id, _TICKETS.c.version == _CHANGING.c.version - 1)
    .values(
        title=_CHANGING.c.title,
        price=_CHANGING.c.price,
        order_id=_CHANGING.c.order_id,
        version=_CHANGING.c.version,
    )
    .returning(_TICKETS.c.id)
)


async def update_ticket(session: AsyncSession, change: TicketUpdated) -> None:
    """Apply a ticket change to the replica in version order: an older one is dropped, one
    from the future waits for those before it."""
    if not await update_tickets(session, [Received(change, None)]):
        return  # the usual case: the next version, in one statement
    ticket = await session.scalar(_LOCK_TICKET, {"ticket_id": change.id})
    if ticket is None:
        raise RetryLater(
            f"ticket {change.id} v{change.version}: its ticket.created has not arrived"
        )
    if change.version <= ticket.version:
        log.info(
            "ticket %s v%d is older than our v%d; dropped",
            change.id,
            change.version,
            ticket.version,
        )
        return
    if change.version > ticket.version + 1:
        raise RetryLater(f"ticket {change.id} v{change.version} is ahead of our v{ticket.version}")
    ticket.title = change.title
    ticket.price = change.price
    ticket.order_id = change.order_id
    ticket.version = change.version
    if change.refused_order_id is not None:
        await cancel_order(session, change.refused_order_id, reason=TICKET_CHANGED)
