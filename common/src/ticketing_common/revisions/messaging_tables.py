"""The messaging tables (outbox, inbox, parked events), for a service with no tables of its own."""

from alembic import op

from ticketing_common.messaging.tables import create_messaging_tables, drop_messaging_tables


def upgrade() -> None:
    create_messaging_tables(op)


def downgrade() -> None:
    drop_messaging_tables(op)
