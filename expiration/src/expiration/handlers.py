"""What the expiration service does with the events it consumes: each becomes a service call."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from expiration import service
from ticketing_common.events import OrderCreated
from ticketing_common.messaging import Consumer, Received

consumer = Consumer("expiration")


@consumer.on(OrderCreated)
async def on_order_created(session: AsyncSession, event: OrderCreated) -> None:
    await service.schedule_expiration(session, event.id, event.expires_at)


@consumer.on_batch(OrderCreated)
async def on_orders_created(
    session: AsyncSession, orders: list[Received[OrderCreated]]
) -> list[Received[OrderCreated]]:
    return await service.schedule_expirations(session, orders)
