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
    # Set when JetStream refused the row for good: the relay leaves it for an operator.
    Column("failed_at", DateTime(timezone=True)),
    Index(
        "ix_outbox_unpublished",
        "position",
        postgresql_where=text("published_at IS NULL AND failed_at IS NULL"),
    ),
)

# Event ids already handled by this service: written in the handler's own transaction.
inbox = Table(
    "inbox",
    messaging_metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("handled_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_inbox_handled_at", "handled_at"),  # for pruning
)

# Events whose handler kept failing, and the later events of the same entity held behind them
# (``waiting_behind`` names the first parked event of the entity): kept for an operator to
# inspect and replay, in order.
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
    Column("entity_key", Text),  # None for a malformed event: nothing can wait behind it
    Column("waiting_behind", UUID(as_uuid=True)),
    Column("position", BigInteger, Identity(always=True), nullable=False, unique=True),
    Index("ix_parked_events_entity_key", "entity_key"),
)


def create_messaging_tables(op: Any) -> None:
    """Version 1 of the messaging tables, for a service's first migration.

    Written out, not ``create_all``: a migration must build what it built the day it ran. A
    later change to these tables comes as a new function here, called by a new migration in
    every service; every service's schema-drift test checks the result against the tables above.
    """
    import sqlalchemy as sa

    op.create_table(
        "outbox",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("position", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("nats_subject", sa.Text(), nullable=False),
        sa.Column("envelope", JSONB(), nullable=False),
        sa.Column("headers", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("position", name="uq_outbox_position"),
    )
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["position"],
        postgresql_where=sa.text("published_at IS NULL AND failed_at IS NULL"),
    )
    op.create_table(
        "inbox",
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column(
            "handled_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("event_id", name="pk_inbox"),
    )
    op.create_index("ix_inbox_handled_at", "inbox", ["handled_at"])
    op.create_table(
        "parked_events",
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("envelope", JSONB(), nullable=False),
        sa.Column("headers", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column(
            "parked_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("event_id", name="pk_parked_events"),
    )


def add_parked_event_order(op: Any) -> None:
    """Version 2: parked events know their entity, so later events of it wait behind them."""
    import sqlalchemy as sa

    op.add_column("parked_events", sa.Column("entity_key", sa.Text(), nullable=True))
    op.add_column("parked_events", sa.Column("waiting_behind", UUID(as_uuid=True), nullable=True))
    op.add_column(
        "parked_events",
        sa.Column("position", sa.BigInteger(), sa.Identity(always=True), nullable=False),
    )
    op.create_unique_constraint("uq_parked_events_position", "parked_events", ["position"])
    op.create_index("ix_parked_events_entity_key", "parked_events", ["entity_key"])


def drop_parked_event_order(op: Any) -> None:
    op.drop_index("ix_parked_events_entity_key", "parked_events")
    for column in ("position", "waiting_behind", "entity_key"):
        op.drop_column("parked_events", column)


def drop_messaging_tables(op: Any) -> None:
    for table in ("parked_events", "inbox", "outbox"):
        op.drop_table(table)
