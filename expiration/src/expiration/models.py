"""No tables of its own: the timers live in JetStream; the database holds the outbox and inbox."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from ticketing_common.db import make_metadata


class Base(DeclarativeBase):
    metadata = make_metadata()
