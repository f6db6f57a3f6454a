"""The messaging tables, identical in every service database.

They are Core tables on their own metadata: a service's migrations create them with
:func:`create_messaging_tables` and its Alembic env compares against ``messaging_metadata``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from ticketing_common.db import make_metadata

messaging_metadata = make_metadata()

# Events committed with a state change, waiting for the relay to publish them.
outbox = Table(
    "outbox",
    messaging_metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),  # the envelope id = Nats-Msg-Id
    # Commit order within one transaction too (timestamps tie there): events go out in order.
    Column("position", BigInteger, Identity(always=True), nullable=False, unique=True),
    Column("nats_subject", Text, nullable=False),
    Column("envelope", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Index("ix_outbox_unpublished", "position", postgresql_where=text("published_at IS NULL")),
)

# Event ids already handled by this service: written in the handler's own transaction.
inbox = Table(
    "inbox",
    messaging_metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("handled_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Events whose handler kept failing: kept for an operator to inspect and replay.
parked_events = Table(
    "parked_events",
    messaging_metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("envelope", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error", Text, nullable=False),
    Column("deliveries", Integer, nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def create_messaging_tables(op: Any) -> None:
    """Version 1 of the messaging tables, for a service's first migration.

    A later change to these tables comes as a new function, so old migrations stay as they ran.
    """
    messaging_metadata.create_all(op.get_bind())


def drop_messaging_tables(op: Any) -> None:
    messaging_metadata.drop_all(op.get_bind())
