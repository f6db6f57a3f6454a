"""Pydantic base models shared by the HTTP APIs and the events: camelCase on the wire."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


# Money is exact: at most two decimal places, never a binary float. On the wire it is a JSON
# string ("12.50") so no client parses it into a float by accident; input may be number or string.
Money = Annotated[
    Decimal,
    Field(max_digits=9, decimal_places=2, allow_inf_nan=False, examples=["20.00"]),
    PlainSerializer(lambda d: f"{d:.2f}", return_type=str, when_used="json"),
]
