from __future__ import annotations

from fastapi import FastAPI

from expiration.handlers import consumer
from expiration.settings import ExpirationSettings
from ticketing_common.app import create_service_app


def create_app(settings: ExpirationSettings) -> FastAPI:
    # No API of its own: /healthz, /readyz and the consumer that turns orders into timers.
    return create_service_app(
        settings,
        title="Ticketing expiration",
        routers=[],
        consumer=consumer,
        description=(
            "Schedules expiration.complete at each order's expiresAt (JetStream message schedules)."
        ),
    )
