from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from ticketing_common.settings import ServiceSettings


class PaymentsSettings(ServiceSettings):
    service_name: str = "payments"
    # STRIPE_KEY set: real Stripe through its SDK; unset: the sandbox provider.
    stripe_key: SecretStr | None = None
    # Where the Stripe SDK sends requests (tests point it at a local fake of Stripe's API).
    stripe_api_base: str | None = None
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    provider_timeout_seconds: float = Field(default=20.0, gt=0)

    @field_validator("stripe_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value
