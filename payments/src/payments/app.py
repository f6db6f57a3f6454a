from __future__ import annotations

from fastapi import FastAPI

from payments.handlers import make_consumer
from payments.providers import PaymentProvider, make_provider
from payments.routes import router
from payments.settings import PaymentsSettings
from ticketing_common.app import create_service_app


def provider_for(settings: PaymentsSettings) -> PaymentProvider:
    return make_provider(
        settings.stripe_key.get_secret_value() if settings.stripe_key else None,
        api_base=settings.stripe_api_base,
        timeout=settings.provider_timeout_seconds,
        max_network_retries=settings.provider_max_network_retries,
    )


def create_app(settings: PaymentsSettings, provider: PaymentProvider | None = None) -> FastAPI:
    provider = provider or provider_for(settings)
    app = create_service_app(
        settings,
        title="Ticketing payments",
        routers=[router],
        consumer=make_consumer(provider),
    )
    app.state.payment_provider = provider
    return app
