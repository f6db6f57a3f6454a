"""Money and display text: strict where a lax parser would read something else than a person."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ticketing_common.models import Money, visible_single_line


class Priced(BaseModel):
    price: Money


@pytest.mark.parametrize(
    ("json_value", "amount"),
    [
        ('"12"', "12"),
        ('"12.5"', "12.5"),
        ('"0.01"', "0.01"),
        ('"007.10"', "7.10"),
        ("25.5", "25.5"),
        ("0.1", "0.1"),
        ("7", "7"),
        ("1e2", "100"),  # a JSON number, exactly 100
    ],
)
def test_money_accepts_ascii_digits_and_exact_numbers(json_value: str, amount: str) -> None:
    price = Priced.model_validate_json(f'{{"price": {json_value}}}').price
    assert price == Decimal(amount)
    assert isinstance(price, Decimal)


@pytest.mark.parametrize(
    "json_value",
    [
        '"1_000"',  # Python's Decimal reads 1000
        '"\\uff11\\uff12"',  # fullwidth 12
        '"\\u0663"',  # Arabic-Indic 3
        '"\\u0967\\u0968"',  # Devanagari 12
        '" 12"',
        '"12 "',
        '"12\\n"',
        '"\\u00a012"',
        '"+12"',
        '"-12"',
        '"1e3"',
        '"1E3"',
        '"12."',
        '".5"',
        '"12.345"',
        '"0x10"',
        '"NaN"',
        '"Infinity"',
        '""',
        '"12,50"',
        "-5",
        "-0.0",  # equals 0, but would be "-0.00" on the wire
        "12.345",
        "0.30000000000000004",
        "true",
        "null",
        "[12]",
    ],
)
def test_money_refuses_anything_else(json_value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Priced.model_validate_json(f'{{"price": {json_value}}}')
    assert [e["loc"] for e in caught.value.errors()] == [("price",)]


@pytest.mark.parametrize(
    "value", [Decimal("1.234"), Decimal("-1"), Decimal("-0"), -0.0, Decimal("NaN"), float("inf")]
)
def test_money_refuses_inexact_or_negative_python_values(value: Any) -> None:
    with pytest.raises(ValidationError):
        Priced(price=value)


def test_money_is_a_two_place_string_on_the_wire() -> None:
    assert Priced(price=Decimal("12.5")).model_dump_json() == '{"price":"12.50"}'


@pytest.mark.parametrize(
    "text",
    [
        "Concert",
        "Café crème",
        "日本語のコンサート",
        "Концерт",
        "حفلة موسيقية",  # right-to-left script, no override needed
        "Rock 🎸",
        "👩\u200d👩\u200d👧",  # a ZWJ sequence: joiners between visible emoji
        "🇳🇱",
        "e\u0301",  # a letter and its combining accent
    ],
)
def test_real_text_in_any_script_is_accepted(text: str) -> None:
    assert visible_single_line(text) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("two\nlines", "control characters"),
        ("cr\rlf", "control characters"),
        ("nul\x00", "control characters"),
        ("tab\there", "control characters"),
        ("esc\x1b[31m", "control characters"),
        ("del\x7f", "control characters"),
        ("next\x85line", "control characters"),  # C1 NEL
        ("csi\x9b", "control characters"),
        ("line\u2028separator", "control characters"),
        ("para\u2029separator", "control characters"),
        ("\ud800", "control characters"),  # a lone surrogate
        ("\u202eevil", "direction"),
        ("a\u202ab", "direction"),
        ("a\u202db", "direction"),
        ("a\u2066b\u2069", "direction"),
        ("a\u2067b", "direction"),
        ("a\u2068b", "direction"),
        ("a\u200eb", "direction"),
        ("a\u200fb", "direction"),
        ("a\u061cb", "direction"),
        ("\u200b", "visible"),
        ("\u200b\u200c\u200d\u2060\ufeff", "visible"),
        ("\u3000\u2003", "visible"),
        ("\u0301", "visible"),
    ],
)
def test_control_bidi_and_invisible_text_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        visible_single_line(text)
