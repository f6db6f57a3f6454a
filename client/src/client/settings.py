"""The web client's settings, from the environment."""

from __future__ import annotations

from pydantic import AnyHttpUrl, Field

from ticketing_common.settings import WebSettings


class ClientSettings(WebSettings):
    service_name: str = "client"
    # Where the services answer, straight (never back through the edge): the cluster's Service
    # DNS names by default; local mode passes each service's own address.
    auth_url: AnyHttpUrl = AnyHttpUrl("http://auth:8000")
    tickets_url: AnyHttpUrl = AnyHttpUrl("http://tickets:8000")
    orders_url: AnyHttpUrl = AnyHttpUrl("http://orders:8000")
    payments_url: AnyHttpUrl = AnyHttpUrl("http://payments:8000")
    # Set: Stripe's Payment Element takes the card in the browser. Unset: the sandbox's test
    # cards are offered instead.
    stripe_publishable_key: str | None = None
    # The currency payments charges in (the same CURRENCY setting): prices are shown in it.
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
