from __future__ import annotations

import logging
import uuid

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from payments.models import CancelledOrder, Order
from payments.providers import PaymentProvider
from payments.service import PaymentStateError, order_cancelled
from ticketing_common.db import advisory_xact_lock
from ticketing_common.events import OrderCancelled, OrderCreated
from ticketing_common.messaging import Consumer

log = logging.getLogger(__name__)


async def _lock_order_id(session: AsyncSession, order_id: uuid.UUID) -> None:
    """Serialise the events of one order (any replica) until commit.

    A row lock cannot do it while the replica does not exist yet: without this, an
    order.created and an order.cancelled handled at once could each miss the other's row.
    """
    await advisory_xact_lock(session, f"order:{order_id}")


async def _replica(session: AsyncSession, order_id: uuid.UUID) -> Order | None:
    order: Order | None = await session.scalar(
        select(Order)
        .where(Order.id == order_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return order


def make_consumer(provider: PaymentProvider) -> Consumer:
    """The service's consumer; its handlers release payments through ``provider``."""
    consumer = Consumer("payments")

    @consumer.on(OrderCreated)
    async def on_order_created(session: AsyncSession, event: OrderCreated) -> None:
        await _lock_order_id(session, event.id)
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
        tombstone = await session.scalar(
            delete(CancelledOrder)
            .where(CancelledOrder.order_id == event.id)
            .returning(CancelledOrder.version)
        )
        if tombstone is not None:
            log.info("order %s was cancelled before it reached us; stored cancelled", event.id)
            order = await _replica(session, event.id)
            if order is None:
                raise PaymentStateError(f"order {event.id} replica missing right after insert")
            await order_cancelled(session, provider, order, tombstone)

    @consumer.on(OrderCancelled)
    async def on_order_cancelled(session: AsyncSession, event: OrderCancelled) -> None:
        await _lock_order_id(session, event.id)
        order = await _replica(session, event.id)
        if order is None:
            # Its order.created is still on its way: leave a tombstone for it to find.
            await session.execute(
                insert(CancelledOrder)
                .values(order_id=event.id, version=event.version)
                .on_conflict_do_update(
                    index_elements=[CancelledOrder.order_id],
                    set_={"version": func.greatest(CancelledOrder.version, event.version)},
                )
            )
            return
        # Orders only ever go created -> cancelled here, but versions may skip (orders may bump
        # the version on changes it does not publish): apply anything newer.
        await order_cancelled(session, provider, order, event.version)

    return consumer
