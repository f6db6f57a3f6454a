"""Parked events know their entity, so later events of it wait behind them."""

from alembic import op

from ticketing_common.messaging.tables import add_parked_event_order, drop_parked_event_order


def upgrade() -> None:
    add_parked_event_order(op)


def downgrade() -> None:
    drop_parked_event_order(op)
