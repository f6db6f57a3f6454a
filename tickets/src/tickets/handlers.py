"""What the tickets service does with the events it consumes: each becomes a service call."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ticketing_common.events import OrderCancelled, OrderCreated
from ticketing_common.messaging import Consumer, Received
from tickets import service

consumer = Consumer("tickets")


@consumer.on(OrderCreated)
async def on_order_created(session: AsyncSession, event: OrderCreated) -> None:
    await service.reserve(session, event.ticket.id, order_id=event.id, price=event.ticket.price)


@consumer.on_batch(OrderCreated)
async def on_orders_created(
    session: AsyncSession, orders: list[Received[OrderCreated]]
) -> list[Received[OrderCreated]]:
    return await service.reserve_all(session, orders)


@consumer.on(OrderCancelled)
async def on_order_cancelled(session: AsyncSession, event: OrderCancelled) -> None:
    await service.release(session, event.ticket.id, order_id=event.id)


@consumer.on_batch(OrderCancelled)
async def on_orders_cancelled(
    session: AsyncSession, cancellations: list[Received[OrderCancelled]]
) -> list[Received[OrderCancelled]]:
    return await service.release_all(session, cancellations)
