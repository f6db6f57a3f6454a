"""an order's cancel reason; the replica knows which order holds each ticket"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("orders", sa.Column("cancel_reason", sa.String(length=200), nullable=True))
    op.add_column("tickets", sa.Column("order_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    op.drop_column("tickets", "order_id")
    op.drop_column("orders", "cancel_reason")
