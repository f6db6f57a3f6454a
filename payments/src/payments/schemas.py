from __future__ import annotations

import uuid

from pydantic import Field

from ticketing_common.models import CamelModel


class PaymentIn(CamelModel):
    order_id: uuid.UUID
    # A card token from the provider's client-side library (e.g. Stripe's tok_...).
    token: str = Field(min_length=1, max_length=255)


class PaymentOut(CamelModel):
    id: uuid.UUID
    order_id: uuid.UUID
    status: str
