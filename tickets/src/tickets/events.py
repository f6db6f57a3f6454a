"""The tickets consumer: orders reserve and release tickets."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ticketing_common.events import OrderCancelled, OrderCreated
from ticketing_common.messaging import Consumer, RetryLater, publish
from tickets.models import CancelledOrder
from tickets.service import lock_ticket, updated_event

log = logging.getLogger(__name__)

consumer = Consumer("tickets")


@consumer.on(OrderCreated)
async def on_order_created(session: AsyncSession, event: OrderCreated) -> None:
    ticket = await lock_ticket(session, event.ticket.id)
    if ticket is None:
        # Orders only sells tickets it heard of from us: this is a fault, retried then parked.
        raise LookupError(f"order {event.id} is for unknown ticket {event.ticket.id}")
    if ticket.order_id == event.id:
        return
    cancelled = await session.scalar(
        select(CancelledOrder.order_id).where(CancelledOrder.order_id == event.id)
    )
    if cancelled is not None:
        log.info("order %s was cancelled before it reached us; not reserving", event.id)
        return
    if ticket.order_id is not None:
        # Held by an earlier order whose order.cancelled has not reached us yet.
        raise RetryLater(f"ticket {ticket.id} is still held by order {ticket.order_id}")
    ticket.order_id = event.id
    ticket.version += 1
    await publish(session, updated_event(ticket))


@consumer.on(OrderCancelled)
async def on_order_cancelled(session: AsyncSession, event: OrderCancelled) -> None:
    ticket = await lock_ticket(session, event.ticket.id)
    if ticket is None:
        raise LookupError(f"order {event.id} is for unknown ticket {event.ticket.id}")
    if ticket.order_id != event.id:
        # Another order holds it, or this order's order.created is still on its way.
        await session.execute(
            insert(CancelledOrder)
            .values(order_id=event.id, ticket_id=ticket.id)
            .on_conflict_do_nothing()
        )
        return
    ticket.order_id = None
    ticket.version += 1
    await publish(session, updated_event(ticket))
