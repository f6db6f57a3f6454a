"""sign-in failures are counted per client"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # Failures so far have no client to count against, and they throttle for one window only:
    # dropping them ends at most one window of throttling early.
    op.execute("DELETE FROM signin_failures")
    op.drop_index("ix_signin_failures_email_failed_at", table_name="signin_failures")
    # The default is for replicas of the previous release, still serving during a rolling
    # update: their inserts name no client.
    op.add_column(
        "signin_failures",
        sa.Column("client", sa.String(length=64), server_default="", nullable=False),
    )
    op.create_index(
        "ix_signin_failures_client_email_failed_at",
        "signin_failures",
        ["client", "email", "failed_at"],
    )
    op.create_index("ix_signin_failures_failed_at", "signin_failures", ["failed_at"])


def downgrade() -> None:
    op.drop_index("ix_signin_failures_failed_at", table_name="signin_failures")
    op.drop_index("ix_signin_failures_client_email_failed_at", table_name="signin_failures")
    op.drop_column("signin_failures", "client")
    op.create_index(
        "ix_signin_failures_email_failed_at", "signin_failures", ["email", "failed_at"]
    )
