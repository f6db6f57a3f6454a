"""Every PostgreSQL URL form in, the form each client wants out."""

from __future__ import annotations

import pytest

from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.settings import ServiceSettings


@pytest.mark.parametrize(
    "given",
    [
        "postgres://app:p%40ss@db:5432/orders",
        "postgresql://app:p%40ss@db:5432/orders",
        "postgresql+asyncpg://app:p%40ss@db:5432/orders",
        "postgresql+psycopg://app:p%40ss@db:5432/orders",
    ],
)
def test_any_form_becomes_each_form(given: str) -> None:
    assert with_driver(given) == "postgresql+asyncpg://app:p%40ss@db:5432/orders"
    assert with_driver(given, driver=PLAIN) == "postgresql://app:p%40ss@db:5432/orders"
    assert with_driver(given, driver=PLAIN, database="postgres") == (
        "postgresql://app:p%40ss@db:5432/postgres"
    )


def test_settings_take_database_url_in_libpq_form() -> None:
    settings = ServiceSettings(jwt_key="k", database_url="postgresql://app@db/orders")
    assert settings.database_url == "postgresql+asyncpg://app@db/orders"
