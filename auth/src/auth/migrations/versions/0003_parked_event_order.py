"""parked events know their entity, so later events of it wait behind them

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

from ticketing_common.messaging.tables import add_parked_event_order, drop_parked_event_order

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_parked_event_order(op)


def downgrade() -> None:
    drop_parked_event_order(op)
