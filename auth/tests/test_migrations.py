from __future__ import annotations

from auth.models import Base
from ticketing_common.testing import TestDatabase


async def test_migrations_match_the_models(auth_db: TestDatabase) -> None:
    assert await auth_db.schema_drift(Base.metadata) == []
