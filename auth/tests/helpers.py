"""Helpers of the auth tests (importable; conftest.py only declares fixtures)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

# A client of the running auth service connecting from the address given.
ClientAt = Callable[[str], httpx.AsyncClient]
