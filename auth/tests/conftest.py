from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ticketing_common.testing import ServiceHarness

from .helpers import ClientAt


@pytest.fixture
def service_name() -> str:
    return "auth"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Cheap argon2 in tests only; production keeps the defaults.
    return {
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 64,
        "argon2_parallelism": 1,
        "signin_max_failures": 3,
        "signin_max_failures_per_client": 8,
    }


@pytest.fixture
async def client_at(harness: ServiceHarness) -> AsyncIterator[ClientAt]:
    """Clients of one running auth service, each connecting from the address given.

    The address is the ASGI peer: what the app sees as ``request.client`` once uvicorn has
    applied (or, for an untrusted peer, ignored) the proxy headers.
    """
    clients: list[httpx.AsyncClient] = []

    def at(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(
            app=harness.app, raise_app_exceptions=False, client=(address, 50000)
        )
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://testserver"))
        return clients[-1]

    async with harness.client():  # runs the app's lifespan
        yield at
        for client in clients:
            await client.aclose()
