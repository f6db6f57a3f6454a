"""Orders: the rules, apart from HTTP and from the broker."""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from orders.models import LIVE_ORDER_INDEX, IdempotencyKey, Order, Ticket
from orders.schemas import OrderIn, OrderOut, OrderTicketOut, SaleOut
from ticketing_common.db import constraint_name, utcnow
from ticketing_common.errors import BadRequestError, ForbiddenError, NotFoundError
from ticketing_common.events import OrderCancelled, OrderCancelledTicket, OrderCreated, OrderStatus
from ticketing_common.events import OrderCreatedTicket as EventTicket
from ticketing_common.messaging import publish

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_PK = "pk_idempotency_keys"
# How long a stored answer is replayed; an older key counts as never used (as Stripe's do).
IDEMPOTENCY_KEY_TTL = timedelta(hours=24)


class TicketNotFoundError(NotFoundError):
    message = "Ticket not found"


class TicketReservedError(BadRequestError):
    message = "Ticket is already reserved"


class OwnTicketError(BadRequestError):
    message = "You cannot buy your own ticket"


class IdempotencyKeyReusedError(BadRequestError):
    message = "Idempotency-Key was already used with a different request"

    def __init__(self) -> None:
        super().__init__(field="Idempotency-Key")


class OrderNotFoundError(NotFoundError):
    message = "Order not found"


class NotOrderOwnerError(ForbiddenError):
    message = "This order is not yours"


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
    expiration_seconds: int,
    idempotency_key: str | None = None,
) -> Answer:
    """Reserve a ticket. With an idempotency key, a retry gets the first answer back.

    Only a created order is remembered under the key: a refusal changed nothing, so a retry
    simply asks again (and may succeed once, say, the ticket is released).
    """
    request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
    if idempotency_key is not None:
        stored = await _stored_answer(session, user_id, idempotency_key, request_hash)
        if stored is not None:
            return stored

    ticket = await session.get(Ticket, request.ticket_id)
    if ticket is None:
        # Unknown, or its ticket.created has not reached our replica yet.
        raise TicketNotFoundError(field="ticketId")
    if ticket.user_id == user_id:
        raise OwnTicketError(field="ticketId")

    order = Order(
        id=uuid.uuid4(),
        user_id=user_id,
        ticket_id=ticket.id,
        ticket_title=ticket.title,
        ticket_price=ticket.price,
        status=OrderStatus.CREATED,
        expires_at=utcnow() + timedelta(seconds=expiration_seconds),
        version=0,
    )
    body = order_out(order).model_dump(mode="json", by_alias=True)
    try:
        if idempotency_key is not None:
            # First, so a concurrent twin of this request waits here for ours to finish.
            session.add(
                IdempotencyKey(
                    user_id=user_id,
                    key=idempotency_key,
                    request_hash=request_hash,
                    status_code=201,
                    response=body,
                )
            )
            await session.flush()
        session.add(order)
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        constraint = constraint_name(exc)
        if constraint == IDEMPOTENCY_KEY_PK and idempotency_key is not None:
            stored = await _stored_answer(session, user_id, idempotency_key, request_hash)
            if stored is not None:
                return stored
        if constraint == LIVE_ORDER_INDEX:
            raise TicketReservedError(field="ticketId") from exc
        raise
    await publish(
        session,
        OrderCreated(
            id=order.id,
            version=order.version,
            status=order.status,
            user_id=order.user_id,
            expires_at=order.expires_at,
            ticket=EventTicket(id=order.ticket_id, price=order.ticket_price),
        ),
    )
    await session.commit()
    return Answer(201, body, replayed=False)


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


async def _owned_order(
    session: AsyncSession, user_id: uuid.UUID, order_id: uuid.UUID, *, lock: bool = False
) -> Order:
    query = select(Order).where(Order.id == order_id)
    order = await session.scalar(query.with_for_update() if lock else query)
    if order is None:
        raise OrderNotFoundError()
    if order.user_id != user_id:
        raise NotOrderOwnerError()
    return order


async def get_order(session: AsyncSession, user_id: uuid.UUID, order_id: uuid.UUID) -> OrderOut:
    return order_out(await _owned_order(session, user_id, order_id))


async def lock_order(session: AsyncSession, order_id: uuid.UUID) -> Order | None:
    """The order, row-locked until commit: a cancel, an expiry and a payment take turns."""
    order: Order | None = await session.scalar(
        select(Order).where(Order.id == order_id).with_for_update()
    )
    return order


async def cancel(session: AsyncSession, order: Order) -> None:
    """Cancel a live order and announce it; the caller commits."""
    order.status = OrderStatus.CANCELLED
    order.version += 1
    await publish(
        session,
        OrderCancelled(
            id=order.id, version=order.version, ticket=OrderCancelledTicket(id=order.ticket_id)
        ),
    )


async def cancel_order(session: AsyncSession, user_id: uuid.UUID, order_id: uuid.UUID) -> None:
    order = await _owned_order(session, user_id, order_id, lock=True)
    if order.status == OrderStatus.COMPLETE:
        raise OrderCompleteError()
    if order.status == OrderStatus.CANCELLED:
        return  # already done: nothing changes, nothing is published again
    await cancel(session, order)
    await session.commit()
