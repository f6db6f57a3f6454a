from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import DateTime, ForeignKey, Numeric, String, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ticketing_common.db import make_metadata


class Base(DeclarativeBase):
    metadata = make_metadata()


class Order(Base):
    """The replica of an order, kept from order.created / order.cancelled."""

    __tablename__ = "orders"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[uuid.UUID]
    price: Mapped[Decimal] = mapped_column(Numeric(11, 2))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CancelledOrder(Base):
    """An order.cancelled that arrived before its order.created (a tombstone).

    The two events can arrive in either order; remembering the cancellation makes the late
    order.created store a cancelled replica, so nobody can pay for an order that no longer
    exists.
    """

    __tablename__ = "cancelled_orders"

    order_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    version: Mapped[int]
    cancelled_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class PaymentStatus(StrEnum):
    # A charge is under way (or its outcome is unknown after a crash): the order's
    # cancellation releases it at the provider all the same.
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    # The order ended cancelled after the money was taken: given back.
    REFUNDED = "refunded"
    # The order ended cancelled before any money was taken: the intent was cancelled.
    VOIDED = "voided"


class Payment(Base):
    """At most one per order (the unique constraint settles any race): the order's one
    payment intent at the provider and what became of it."""

    __tablename__ = "payments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(32))
    intent_ref: Mapped[str] = mapped_column(String(255))
    refund_ref: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[Decimal] = mapped_column(Numeric(11, 2))
    currency: Mapped[str] = mapped_column(String(3))
    # Requests charging this payment's intent right now. A declined attempt deletes a pending
    # row only when it was the last one: a concurrent attempt may be taking the money.
    attempts_in_flight: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
