"""Production never takes a payment without a payment provider."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from payments.settings import PaymentsSettings

STRONG_JWT_KEY = "0f" * 32
# Everything else production requires, so only the Stripe key is in question.
PRODUCTION = {
    "ENVIRONMENT": "production",
    "JWT_KEY": STRONG_JWT_KEY,
    "NATS_USER": "payments",
    "NATS_PASSWORD": "nats-password-0123456789",
}
ALPHANUMERIC = string.ascii_letters + string.digits


def random_key(prefix: str) -> str:
    return prefix + "".join(secrets.choice(ALPHANUMERIC) for _ in range(99))


def production(**values: Any) -> PaymentsSettings:
    settings: dict[str, Any] = {k.lower(): v for k, v in PRODUCTION.items()} | values
    return PaymentsSettings(**settings)


@pytest.mark.parametrize(
    "stripe_key",
    [
        None,
        "",
        "changeme",
        "sk_live_",
        "sk_live_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "sk_live_0000000000000000000000000000000000",
        "sk_live_123456789012345678901234567890",
        "sk_live_...",
        "<your Stripe key>",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",  # the key in Stripe's documentation
        "sk_live_51Hq2",  # too short to be one
        random_key("pk_live_"),  # a publishable key cannot charge
        random_key("whsec_"),  # a webhook secret
        " " + random_key("sk_live_"),
    ],
)
def test_production_refuses_to_start_without_a_real_stripe_key(stripe_key: str | None) -> None:
    with pytest.raises(ValidationError, match="STRIPE_KEY must be a Stripe secret"):
        production(stripe_key=stripe_key)


@pytest.mark.parametrize("prefix", ["sk_live_", "rk_live_", "sk_test_", "rk_test_"])
def test_production_accepts_a_secret_or_restricted_key(prefix: str) -> None:
    key = random_key(prefix)
    settings = production(stripe_key=key)
    assert settings.stripe_key is not None and settings.stripe_key.get_secret_value() == key


def test_outside_production_no_key_means_the_sandbox() -> None:
    settings = PaymentsSettings(environment="development", jwt_key="dev")
    assert settings.stripe_key is None


def test_serve_exits_with_a_clear_message_in_production_without_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("STRIPE_KEY", "DATABASE_URL")}
    env |= PRODUCTION | {"STRIPE_KEY": "sk_live_xxx"}
    result = subprocess.run(
        [sys.executable, "-m", "payments", "serve", "--migrate", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("refusing to start: STRIPE_KEY must be a Stripe secret")
    assert "Traceback" not in result.stderr
    assert "payments started" not in result.stdout
