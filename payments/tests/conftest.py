from __future__ import annotations

import pytest
from fastapi import FastAPI
from nats.js import JetStreamContext

from payments.app import create_app
from payments.providers import SandboxProvider
from payments.settings import PaymentsSettings
from ticketing_common.testing import TestDatabase
from ticketing_common.testing.stand_ins import OrdersStandIn


@pytest.fixture
def service_name() -> str:
    return "payments"


@pytest.fixture
def provider() -> SandboxProvider:
    return SandboxProvider()


@pytest.fixture
def app(settings: PaymentsSettings, provider: SandboxProvider) -> FastAPI:
    return create_app(settings, provider)


@pytest.fixture
def orders(
    jetstream: JetStreamContext, db: TestDatabase, settings: PaymentsSettings
) -> OrdersStandIn:
    return OrdersStandIn(jetstream, db, settings)
