from __future__ import annotations

import re
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from ticketing_common.settings import ServiceSettings

# The most the Stripe SDK sleeps between two tries of one call.
PROVIDER_RETRY_DELAY_MAX_SECONDS = 5.0
# Prices have two decimals and are charged in hundredths; these currencies have none or three.
NOT_TWO_DECIMAL_CURRENCIES = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
        "bhd",
        "jod",
        "kwd",
        "omr",
        "tnd",
    ]
)

# A Stripe secret (sk_) or restricted (rk_) key; real ones carry dozens of random characters.
STRIPE_KEY_PATTERN = re.compile(r"(sk|rk)_(live|test)_[0-9A-Za-z]{24,}")
# The key printed in Stripe's own documentation, pasted into many a manifest.
STRIPE_DOCUMENTATION_KEY = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"


def looks_like_a_real_stripe_key(key: str) -> bool:
    # No word list: any word could turn up in a real key's random characters.
    random_part = key.split("_", 2)[-1]
    return (
        STRIPE_KEY_PATTERN.fullmatch(key) is not None
        and key != STRIPE_DOCUMENTATION_KEY
        and len(set(random_part)) >= 12  # not sk_live_xxxxxxxx... nor sk_live_12345678...
    )


class PaymentsSettings(ServiceSettings):
    service_name: str = "payments"
    # STRIPE_KEY set: real Stripe through its SDK; unset: the sandbox provider, where a test
    # token "pays", so production refuses to start without a real key.
    stripe_key: SecretStr | None = None
    # Where the Stripe SDK sends requests (tests point it at a local fake of Stripe's API).
    stripe_api_base: str | None = None
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    # One provider call: this long per try, retried this often (same idempotency key).
    provider_timeout_seconds: float = Field(default=5.0, gt=0)
    provider_max_network_retries: int = Field(default=1, ge=0, le=5)
    # A release makes several provider calls inside one handler, which gets ack_wait / 2.
    consumer_ack_wait_seconds: float = Field(default=60.0, gt=0)

    @field_validator("currency")
    @classmethod
    def _two_decimal_currency(cls, value: str) -> str:
        if value in NOT_TWO_DECIMAL_CURRENCIES:
            raise ValueError(f"{value} does not have two decimal places; prices here do")
        return value

    @field_validator("stripe_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _real_provider_in_production(self) -> Self:
        if self.environment != "production":
            return self
        key = self.stripe_key.get_secret_value() if self.stripe_key else ""
        if not looks_like_a_real_stripe_key(key):
            raise ValueError(
                "STRIPE_KEY must be a Stripe secret or restricted key (sk_live_..., "
                "rk_live_...; sk_test_... for a staging site) in production: without one "
                "payments would use the sandbox, where a test card token pays"
            )
        return self

    @model_validator(mode="after")
    def _provider_call_fits_a_handler(self) -> Self:
        retries = self.provider_max_network_retries
        longest_call = (
            self.provider_timeout_seconds * (retries + 1)
            + PROVIDER_RETRY_DELAY_MAX_SECONDS * retries
        )
        if longest_call > self.consumer_ack_wait_seconds / 2:
            raise ValueError(
                f"one provider call may take {longest_call:g}s, more than a handler's budget "
                f"(consumer_ack_wait_seconds / 2 = {self.consumer_ack_wait_seconds / 2:g}s)"
            )
        return self
