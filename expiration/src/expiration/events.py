from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from expiration.service import schedule_expiration
from ticketing_common.events import OrderCreated
from ticketing_common.messaging import Consumer

consumer = Consumer("expiration")


@consumer.on(OrderCreated)
async def on_order_created(session: AsyncSession, event: OrderCreated) -> None:
    await schedule_expiration(session, event.id, event.expires_at)
