from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from ticketing_common.models import CamelModel, Money, visible_single_line

MAX_PRICE = Decimal("1000000")

# Shown to every buyer: one line that shows what it says (PostgreSQL would also refuse a NUL:
# a 500 instead of a 400).
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=120),
    AfterValidator(visible_single_line),
]
# More than two decimals is refused (Money's rule), never rounded.
Price = Annotated[Money, Field(gt=0, le=MAX_PRICE)]


class TicketIn(CamelModel):
    title: Title
    price: Price


class TicketOut(CamelModel):
    id: uuid.UUID
    title: str
    price: Money
    user_id: uuid.UUID
    order_id: uuid.UUID | None
    version: int
