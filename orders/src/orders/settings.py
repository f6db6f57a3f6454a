from __future__ import annotations

from pydantic import Field

from ticketing_common.settings import ServiceSettings


class OrdersSettings(ServiceSettings):
    service_name: str = "orders"
    # ORDER_EXPIRATION_SECONDS: how long a reservation holds before it expires unpaid. Bounded
    # well below the stream's max age (14 days): the expiry timer and the events an order needs
    # must still be in the stream when it fires.
    order_expiration_seconds: int = Field(default=15 * 60, ge=1, le=7 * 24 * 3600)
