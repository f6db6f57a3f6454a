"""The hand-written migrations build exactly the schema the models describe."""

from __future__ import annotations

from ticketing_common.testing import TestDatabase
from tickets.models import Base


async def test_migrations_match_models(db: TestDatabase) -> None:
    assert await db.schema_drift(Base.metadata) == []
