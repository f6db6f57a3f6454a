"""orders, the tickets replica, idempotency keys and the messaging tables"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from ticketing_common.messaging.tables import create_messaging_tables, drop_messaging_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(length=120), nullable=False),
        sa.Column("price", sa.Numeric(precision=9, scale=2), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("ticket_id", sa.Uuid(), nullable=False),
        sa.Column("ticket_title", sa.String(length=120), nullable=False),
        sa.Column("ticket_price", sa.Numeric(precision=9, scale=2), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "status IN ('created', 'awaiting_payment', 'cancelled', 'complete')",
            name="ck_orders_order_status",
        ),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_orders_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
    )
    # Never two live orders for one ticket: the database settles every race.
    op.create_index(
        "uq_orders_live_ticket",
        "orders",
        ["ticket_id"],
        unique=True,
        postgresql_where=sa.text("status <> 'cancelled'"),
    )
    op.create_index("ix_orders_user_id_created_at", "orders", ["user_id", "created_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key", name="pk_idempotency_keys"),
    )
    create_messaging_tables(op)


def downgrade() -> None:
    drop_messaging_tables(op)
    op.drop_table("idempotency_keys")
    op.drop_index("ix_orders_user_id_created_at", table_name="orders")
    op.drop_index("uq_orders_live_ticket", table_name="orders")
    op.drop_table("orders")
    op.drop_table("tickets")
