"""The one place a PostgreSQL URL changes form.

Settings, local mode and tests may be given ``postgres://``, ``postgresql://`` or a URL that
names a driver; SQLAlchemy wants ``postgresql+asyncpg://``, while asyncpg and libpq tools want
the plain ``postgresql://``. :func:`with_driver` turns any of them into the form asked for.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

SQLALCHEMY_DRIVER = "postgresql+asyncpg"
PLAIN = "postgresql"


def with_driver(
    url: str | URL, *, driver: str = SQLALCHEMY_DRIVER, database: str | None = None
) -> str:
    """``url`` with ``driver`` (``PLAIN`` for asyncpg's own ``connect``, or e.g.
    ``postgresql+psycopg``) and, when given, another ``database`` on the same server."""
    parsed = make_url(url).set(drivername=driver)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)
