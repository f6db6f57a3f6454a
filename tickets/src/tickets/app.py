from __future__ import annotations

from fastapi import FastAPI

from ticketing_common.app import create_service_app
from tickets.handlers import consumer
from tickets.routes import router
from tickets.settings import TicketsSettings


def create_app(settings: TicketsSettings) -> FastAPI:
    return create_service_app(
        settings,
        title="Ticketing tickets",
        description="Tickets for sale: list, show, create and update them.",
        routers=[router],
        consumer=consumer,
    )
