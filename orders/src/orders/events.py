"""The orders consumer: the tickets replica, expiries and payments."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from orders.models import Order, Ticket
from orders.service import cancel, lock_order
from ticketing_common.events import (
    ExpirationComplete,
    OrderStatus,
    PaymentCreated,
    TicketCreated,
    TicketUpdated,
)
from ticketing_common.messaging import Consumer, RetryLater

log = logging.getLogger(__name__)

consumer = Consumer("orders")


@consumer.on(TicketCreated)
async def on_ticket_created(session: AsyncSession, event: TicketCreated) -> None:
    await session.execute(
        insert(Ticket)
        .values(
            id=event.id,
            title=event.title,
            price=event.price,
            user_id=event.user_id,
            version=event.version,
        )
        .on_conflict_do_nothing(index_elements=[Ticket.id])
    )


@consumer.on(TicketUpdated)
async def on_ticket_updated(session: AsyncSession, event: TicketUpdated) -> None:
    ticket = await session.scalar(select(Ticket).where(Ticket.id == event.id).with_for_update())
    if ticket is None:
        raise RetryLater(f"ticket {event.id} v{event.version}: its ticket.created has not arrived")
    if event.version <= ticket.version:
        log.info(
            "ticket %s v%d is older than our v%d; dropped", event.id, event.version, ticket.version
        )
        return
    if event.version > ticket.version + 1:
        raise RetryLater(f"ticket {event.id} v{event.version} is ahead of our v{ticket.version}")
    ticket.title = event.title
    ticket.price = event.price
    ticket.version = event.version


async def _lock(session: AsyncSession, event: ExpirationComplete | PaymentCreated) -> Order:
    order = await lock_order(session, event.order_id)
    if order is None:
        # Every order.created we publish is committed before anything can refer to it.
        raise LookupError(f"{event.subject} for unknown order {event.order_id}")
    return order


@consumer.on(ExpirationComplete)
async def on_expiration_complete(session: AsyncSession, event: ExpirationComplete) -> None:
    order = await _lock(session, event)
    if order.status in (OrderStatus.COMPLETE, OrderStatus.CANCELLED):
        return
    await cancel(session, order)


@consumer.on(PaymentCreated)
async def on_payment_created(session: AsyncSession, event: PaymentCreated) -> None:
    order = await _lock(session, event)
    if order.status == OrderStatus.CANCELLED:
        # The payments service refunds a payment for a cancelled order.
        log.warning("payment %s for cancelled order %s; not completing", event.id, order.id)
        return
    if order.status == OrderStatus.COMPLETE:
        return
    order.status = OrderStatus.COMPLETE
    order.version += 1
