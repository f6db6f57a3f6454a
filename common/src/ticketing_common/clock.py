"""The one clock: timezone-aware UTC, so times compare and serialise the same everywhere."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
