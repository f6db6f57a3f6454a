from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from ticketing_common.events import OrderStatus
from ticketing_common.models import CamelModel, Money


class OrderIn(CamelModel):
    ticket_id: uuid.UUID


class OrderTicketOut(CamelModel):
    id: uuid.UUID
    title: str
    price: Money


class OrderOut(CamelModel):
    id: uuid.UUID
    status: OrderStatus
    user_id: uuid.UUID
    expires_at: datetime
    version: int
    ticket: OrderTicketOut
    # Why the order was cancelled, when it was not the buyer's doing or an expiry.
    cancel_reason: str | None = None


class SaleOut(CamelModel):
    """One of the caller's tickets, as a seller sees it: its state follows its live order."""

    ticket: OrderTicketOut
    state: Literal["available", "reserved", "sold"]
