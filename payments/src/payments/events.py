from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from payments.models import Order
from payments.providers import PaymentProvider
from payments.service import order_cancelled
from ticketing_common.events import OrderCancelled, OrderCreated
from ticketing_common.messaging import Consumer, RetryLater


def make_consumer(provider: PaymentProvider) -> Consumer:
    """The service's consumer; its handlers release payments through ``provider``."""
    consumer = Consumer("payments")

    @consumer.on(OrderCreated)
    async def on_order_created(session: AsyncSession, event: OrderCreated) -> None:
        await session.execute(
            insert(Order)
            .values(
                id=event.id,
                version=event.version,
                status=event.status.value,
                user_id=event.user_id,
                price=event.ticket.price,
                expires_at=event.expires_at,
            )
            .on_conflict_do_nothing(index_elements=[Order.id])
        )

    @consumer.on(OrderCancelled)
    async def on_order_cancelled(session: AsyncSession, event: OrderCancelled) -> None:
        order = await session.scalar(select(Order).where(Order.id == event.id).with_for_update())
        if order is None:
            raise RetryLater(f"order {event.id} not replicated yet")
        # Orders only ever go created -> cancelled here, but versions may skip (orders may bump
        # the version on changes it does not publish): apply anything newer.
        await order_cancelled(session, provider, order, event.version)

    return consumer
