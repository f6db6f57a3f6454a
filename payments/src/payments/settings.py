from __future__ import annotations

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


class PaymentsSettings(ServiceSettings):
    service_name: str = "payments"
    # STRIPE_KEY set: real Stripe through its SDK; unset: the sandbox provider.
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
