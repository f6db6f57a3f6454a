from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from ticketing_common.models import CamelModel, Money

MAX_PRICE = Decimal("1000000")

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _printable(title: str) -> str:
    # One line of text; PostgreSQL would refuse a NUL (a 500 instead of a 400).
    if CONTROL_CHARACTERS.search(title):
        raise ValueError("Title must be one line of printable text")
    return title


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=120),
    AfterValidator(_printable),
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
