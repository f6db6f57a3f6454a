from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ticketing_common.db import make_metadata


class Base(DeclarativeBase):
    metadata = make_metadata()


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # Stored lower-cased; the unique constraint settles the sign-up race.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SigninFailure(Base):
    """One failed sign-in from one client; recent ones throttle that client (any replica)."""

    __tablename__ = "signin_failures"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320))
    # The client's address, as the edge or Ingress reported it ("" from an older release).
    client: Mapped[str] = mapped_column(String(64), server_default="")
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("ix_signin_failures_client_email_failed_at", "client", "email", "failed_at"),
        Index("ix_signin_failures_failed_at", "failed_at"),  # clearing stale ones
    )
