from __future__ import annotations

from fastapi import FastAPI

from orders.handlers import consumer
from orders.routes import router
from orders.settings import OrdersSettings
from ticketing_common.app import create_service_app


def create_app(settings: OrdersSettings) -> FastAPI:
    return create_service_app(
        settings,
        title="Ticketing orders",
        description="Orders: reserve a ticket, list, show and cancel your orders.",
        routers=[router],
        consumer=consumer,
    )
