from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Enum, ForeignKey, Index, Numeric, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ticketing_common.db import make_metadata
from ticketing_common.events import OrderStatus


class Base(DeclarativeBase):
    metadata = make_metadata()


class Ticket(Base):
    """Our replica of a ticket, kept from the tickets events (applied in version order)."""

    __tablename__ = "tickets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(120))
    price: Mapped[Decimal] = mapped_column(Numeric(9, 2))
    user_id: Mapped[uuid.UUID]
    version: Mapped[int]
    # The order tickets reserved it for, as last announced (None: free).
    order_id: Mapped[uuid.UUID | None] = mapped_column(default=None)


LIVE_ORDER_INDEX = "uq_orders_live_ticket"
# Which orders the index covers; an ON CONFLICT naming the index must repeat it word for word.
LIVE_ORDER = text("status <> 'cancelled'")


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID]
    ticket_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tickets.id"))
    # The ticket as it was when ordered: the price order.created carried (what payments
    # charges). Later ticket.updated events change the replica, never an order's history.
    ticket_title: Mapped[str] = mapped_column(String(120))
    ticket_price: Mapped[Decimal] = mapped_column(Numeric(9, 2))
    status: Mapped[OrderStatus] = mapped_column(
        Enum(
            OrderStatus,
            name="order_status",
            native_enum=False,
            create_constraint=True,
            length=20,
            values_callable=lambda statuses: [s.value for s in statuses],
        )
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Bumped by every status change.
    version: Mapped[int] = mapped_column(default=0)
    # Why it was cancelled, when the buyer should know (say the ticket's price changed).
    cancel_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # Never two live orders for one ticket, however many buyers race: the database decides.
        Index(
            LIVE_ORDER_INDEX,
            "ticket_id",
            unique=True,
            postgresql_where=LIVE_ORDER,
        ),
        Index("ix_orders_user_id_created_at", "user_id", "created_at"),
    )


class IdempotencyKey(Base):
    """The first answer to a POST /api/orders sent with an ``Idempotency-Key``, per user."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # A fingerprint of the request, so the key reused for another request is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
