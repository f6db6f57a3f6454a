from __future__ import annotations

import httpx
import pytest
from nats.js import JetStreamContext

from ticketing_common.testing import TestDatabase, Users
from ticketing_common.testing.stand_ins import TicketsStandIn

from .helpers import Shop


@pytest.fixture
def service_name() -> str:
    return "orders"


@pytest.fixture
def tickets(
    jetstream: JetStreamContext, db: TestDatabase, client: httpx.AsyncClient
) -> TicketsStandIn:
    return TicketsStandIn(jetstream, db)


@pytest.fixture
def shop(client: httpx.AsyncClient, users: Users, tickets: TicketsStandIn) -> Shop:
    return Shop(client, users, tickets)
