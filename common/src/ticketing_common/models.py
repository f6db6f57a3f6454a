"""Pydantic base models and value types shared by the HTTP APIs and the events.

camelCase on the wire. The value types are strict where input is money or text shown to people:
what a person cannot see or a program reads differently is refused, never normalised.
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


# ASCII digits only: Python's Decimal would also take "1_000", fullwidth or Arabic-Indic digits,
# " 12 " and "1e3".
MONEY_TEXT = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?", re.ASCII)
MONEY_ERROR = 'Must be an amount like "12.50": digits, at most two decimal places'


def _parse_money(value: object) -> Decimal:
    if isinstance(value, str):
        if not MONEY_TEXT.fullmatch(value):
            raise ValueError(MONEY_ERROR)
        return Decimal(value)
    if isinstance(value, bool):  # a bool is an int to Python, not an amount
        raise ValueError(MONEY_ERROR)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        # The shortest text that reads back as this float: 0.1 is "0.1", not 0.1000000000000000055.
        return _unsigned_zero(Decimal(repr(value)))
    if isinstance(value, Decimal) and value.is_finite():
        return _unsigned_zero(value)
    raise ValueError(MONEY_ERROR)


def _unsigned_zero(amount: Decimal) -> Decimal:
    # -0 passes "never negative" (it equals 0) but would go on the wire as "-0.00".
    if amount.is_zero() and amount.is_signed():
        raise ValueError(MONEY_ERROR)
    return amount


# Money is exact: at most two decimal places, never a binary float, never negative. On the wire it
# is a JSON string ("12.50") so no client parses it into a float by accident; input may be a
# string of ASCII digits or a JSON number that is exact with at most two places.
Money = Annotated[
    Decimal,
    Field(max_digits=9, decimal_places=2, ge=0, examples=["20.00"]),
    BeforeValidator(_parse_money),
    PlainSerializer(lambda d: f"{d:.2f}", return_type=str, when_used="json"),
]

# Characters that reorder the text around them (Trojan Source): U+061C, U+200E/F, U+202A-E,
# U+2066-9. They are format characters (Cf), as are the joiners emoji sequences need.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Control characters (C0, DEL, C1 such as U+0085), line and paragraph separators, surrogates.
NOT_ONE_LINE = frozenset({"Cc", "Zl", "Zp", "Cs"})
# Letters, numbers, punctuation and symbols (emoji are So) can be seen;
# spaces, format characters (U+200B, joiners) and lone combining marks cannot.
VISIBLE = ("L", "N", "P", "S")


def visible_single_line(text: str) -> str:
    """For text shown to other people (a ticket's title): one line that shows what it says.

    Any script and emoji (ZWJ sequences included) are fine; control characters, bidi
    overrides and text with nothing visible in it are refused.
    """
    categories = [unicodedata.category(c) for c in text]
    if any(category in NOT_ONE_LINE for category in categories):
        raise ValueError("Must be one line of text without control characters")
    if any(c in BIDI_CONTROLS for c in text):
        raise ValueError("Must not contain characters that change the direction of text")
    if not any(category.startswith(VISIBLE) for category in categories):
        raise ValueError("Must contain a visible character")
    return text
