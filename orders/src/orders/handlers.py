"""What the orders service does with the events it consumes: each becomes a service call."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from orders import service
from ticketing_common.events import ExpirationComplete, PaymentCreated, TicketCreated, TicketUpdated
from ticketing_common.messaging import Consumer, Received

consumer = Consumer("orders")


@consumer.on(TicketCreated)
async def on_ticket_created(session: AsyncSession, event: TicketCreated) -> None:
    await service.add_ticket(session, event)


@consumer.on(TicketUpdated)
async def on_ticket_updated(session: AsyncSession, event: TicketUpdated) -> None:
    await service.update_ticket(session, event)


@consumer.on_batch(TicketUpdated)
async def on_tickets_updated(
    session: AsyncSession, changes: list[Received[TicketUpdated]]
) -> list[Received[TicketUpdated]]:
    return await service.update_tickets(session, changes)


@consumer.on(ExpirationComplete)
async def on_expiration_complete(session: AsyncSession, event: ExpirationComplete) -> None:
    await service.cancel_order(session, event.order_id)


@consumer.on_batch(ExpirationComplete)
async def on_expirations_complete(
    session: AsyncSession, expiries: list[Received[ExpirationComplete]]
) -> list[Received[ExpirationComplete]]:
    return await service.expire_orders(session, expiries)


@consumer.on(PaymentCreated)
async def on_payment_created(session: AsyncSession, event: PaymentCreated) -> None:
    await service.complete_order(session, event.order_id, payment_id=event.id)
