"""What the payments service does with the events it consumes: each becomes a service call."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from payments import service
from payments.providers import PaymentProvider
from ticketing_common.events import OrderCancelled, OrderCreated
from ticketing_common.messaging import Consumer, Received


def make_consumer(provider: PaymentProvider) -> Consumer:
    """The service's consumer; its handlers release payments through ``provider``."""
    consumer = Consumer("payments")

    @consumer.on(OrderCreated)
    async def on_order_created(session: AsyncSession, event: OrderCreated) -> None:
        await service.add_order(session, provider, event)

    @consumer.on_batch(OrderCreated)
    async def on_orders_created(
        session: AsyncSession, orders: list[Received[OrderCreated]]
    ) -> list[Received[OrderCreated]]:
        return await service.add_orders(session, orders)

    @consumer.on(OrderCancelled)
    async def on_order_cancelled(session: AsyncSession, event: OrderCancelled) -> None:
        await service.cancel_order(session, provider, event.id, event.version)

    @consumer.on_batch(OrderCancelled)
    async def on_orders_cancelled(
        session: AsyncSession, cancellations: list[Received[OrderCancelled]]
    ) -> list[Received[OrderCancelled]]:
        return await service.cancel_orders(session, cancellations)

    return consumer
