from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, DateTime, Index, Numeric, String, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ticketing_common.db import make_metadata


class Base(DeclarativeBase):
    metadata = make_metadata()


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(120))
    # Exact money: at most 9 digits, 2 of them decimals (up to 1,000,000.00 by the API's rule).
    price: Mapped[Decimal] = mapped_column(Numeric(9, 2))
    user_id: Mapped[uuid.UUID]
    # The order holding the ticket; null while it is available to buy.
    order_id: Mapped[uuid.UUID | None]
    # Bumped by every change, so the other services apply the changes in order.
    version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("price > 0", name="price_positive"),
        # The available list, newest first, paged by (created_at, id).
        Index(
            "ix_tickets_available",
            created_at.desc(),
            id.desc(),
            postgresql_where=text("order_id IS NULL"),
        ),
    )


class CancelledOrder(Base):
    """An order cancelled before its order.created reached us.

    The two events can arrive in either order (the publisher's outbox orders by transaction
    start); remembering the cancellation stops a late order.created from reserving the ticket
    for an order that no longer exists.
    """

    __tablename__ = "cancelled_orders"

    order_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ticket_id: Mapped[uuid.UUID]
    cancelled_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
