from __future__ import annotations

from pydantic import Field

from ticketing_common.settings import ServiceSettings


class OrdersSettings(ServiceSettings):
    service_name: str = "orders"
    # ORDER_EXPIRATION_SECONDS: how long a reservation holds before it expires unpaid.
    order_expiration_seconds: int = Field(default=15 * 60, gt=0)
