"""Payment providers behind one small interface.

A provider holds one payment *intent* per order (created idempotently: asking again for the same
order gives the same intent), and an intent takes money at most once. That is what makes a
retried or double-clicked payment safe even before our own database has a say:

- ``prepare``: the order's intent (created on first call, the same one afterwards);
- ``confirm``: charge the intent with a card token (or, at Stripe, a PaymentMethod id); returns
  when the intent is paid (by this call or an earlier one: never a second capture); raises
  :class:`PaymentDeclinedError`, :class:`InvalidPaymentTokenError`, :class:`IntentClosedError`
  (released meanwhile) or :class:`ProviderUnavailableError`;
- ``release``: make sure nothing is kept: refund a paid intent (returns the refund's reference)
  or cancel an unpaid one so it can never be paid (returns None). Idempotent. ``paid`` says
  whether our own record has the payment as succeeded (the sandbox, which forgets its intents
  on a restart, decides by it; Stripe is asked instead).

A provider that cannot be reached raises :class:`ProviderUnavailableError`, a
:class:`TemporaryFailure`: the consumer retries a release until the provider is back, and never
parks it. A request the provider refuses for good (say, an amount below its minimum) is a
:class:`PaymentRejectedError` (400), not "try again".

``sandbox`` (no ``STRIPE_KEY``) decides by Stripe's test tokens: ``tok_visa`` and the other
successful test cards are paid, ``tok_chargeDeclined*`` is declined (402); any other token is
rejected as invalid (400), as Stripe rejects a token it does not know. Its intents live in the
process's memory, which is enough for local mode and tests, not for real money: after a
restart (or in ``parked replay``, which builds its own provider) an intent it does not know is
treated as a fresh one, and a release is decided by the payment's recorded status.
``stripe`` (in ``stripe_provider``, loaded only with a ``STRIPE_KEY``) uses the official SDK's
async client: PaymentIntents with idempotency keys, short timeouts and one retry, so no call
outlasts a consumer handler's time budget.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from ticketing_common.errors import AppError, BadRequestError, PaymentRequiredError
from ticketing_common.messaging import TemporaryFailure


class PaymentDeclinedError(PaymentRequiredError):
    message = "Your card was declined"


class InvalidPaymentTokenError(BadRequestError):
    message = "Invalid payment token"
    field = "token"


class PaymentRejectedError(BadRequestError):
    """The provider refuses this payment for good: asking again will not help."""

    message = "The payment provider refused this payment"


class AmountTooSmallError(PaymentRejectedError):
    message = "The amount is below the minimum the payment provider accepts"


class AmountTooLargeError(PaymentRejectedError):
    message = "The amount is above the maximum the payment provider accepts"


class ProviderUnavailableError(AppError, TemporaryFailure):
    """The provider cannot be reached (or failed on its side): worth retrying, never parked."""

    status_code = 503
    message = "The payment provider is unavailable; please try again"


class IntentClosedError(Exception):
    """The intent was cancelled (its order was cancelled) before it could be paid."""


class PaymentProvider(Protocol):
    name: str

    async def prepare(self, *, order_id: uuid.UUID, amount: Decimal, currency: str) -> str: ...

    async def confirm(self, *, intent_ref: str, token: str) -> None: ...

    async def release(self, *, intent_ref: str, paid: bool) -> str | None: ...


def to_minor_units(amount: Decimal) -> int:
    """12.50 -> 1250: providers take integer cents."""
    return int((amount * 100).to_integral_value())


# A PaymentMethod id (the web client's Payment Element makes one), rather than a card token.
PAYMENT_METHOD_PREFIX = "pm_"
# Stripe's test tokens that pay (https://docs.stripe.com/testing#cards).
SANDBOX_PAYING_TOKENS = frozenset(
    {
        "tok_visa",
        "tok_visa_debit",
        "tok_mastercard",
        "tok_mastercard_debit",
        "tok_mastercard_prepaid",
        "tok_amex",
        "tok_discover",
        "tok_diners",
        "tok_jcb",
        "tok_unionpay",
    }
)
SANDBOX_DECLINED_PREFIX = "tok_chargeDeclined"


@dataclass
class SandboxIntent:
    ref: str
    amount: int | None  # None: made again after a restart, the amount was not asked
    currency: str | None
    status: str = "requires_payment_method"  # -> succeeded (-> refunded) | canceled
    refund_ref: str | None = None


@dataclass
class SandboxProvider:
    """A provider that takes no real money; ``captures`` and ``refunds`` record what it did."""

    name: str = "sandbox"
    intents: dict[str, SandboxIntent] = field(default_factory=dict)
    captures: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def prepare(self, *, order_id: uuid.UUID, amount: Decimal, currency: str) -> str:
        ref = f"pi_sandbox_{order_id.hex}"
        async with self._lock:
            self.intents.setdefault(ref, SandboxIntent(ref, to_minor_units(amount), currency))
        return ref

    async def confirm(self, *, intent_ref: str, token: str) -> None:
        async with self._lock:
            # Unknown: prepared before a restart (or by another replica); start it afresh.
            intent = self.intents.setdefault(intent_ref, SandboxIntent(intent_ref, None, None))
            if intent.status == "succeeded":
                return
            if intent.status in ("canceled", "refunded"):
                raise IntentClosedError(intent_ref)
            if token.startswith(SANDBOX_DECLINED_PREFIX):
                raise PaymentDeclinedError()
            if token not in SANDBOX_PAYING_TOKENS:
                raise InvalidPaymentTokenError()
            intent.status = "succeeded"
            self.captures.append(intent_ref)

    async def release(self, *, intent_ref: str, paid: bool) -> str | None:
        async with self._lock:
            intent = self.intents.get(intent_ref)
            if intent is None:
                # Forgotten with a restart: our record says whether it was paid. Either way it
                # is closed from now on, so a late confirm cannot take money.
                intent = self.intents[intent_ref] = SandboxIntent(
                    intent_ref,
                    None,
                    None,
                    status="succeeded" if paid else "requires_payment_method",
                )
            if intent.status == "succeeded":
                intent.status = "refunded"
                intent.refund_ref = f"re_sandbox_{uuid.uuid4().hex}"
                self.refunds.append(intent_ref)
            elif intent.status != "refunded":
                intent.status = "canceled"
            return intent.refund_ref


def make_provider(
    stripe_key: str | None,
    *,
    api_base: str | None = None,
    timeout: float = 5.0,
    max_network_retries: int = 1,
) -> PaymentProvider:
    if stripe_key:
        # Imported only here: the SDK (and the HTTP client under it) is a few MiB that a
        # process on the sandbox never needs.
        from payments.stripe_provider import StripeProvider

        return StripeProvider(
            stripe_key, api_base=api_base, timeout=timeout, max_network_retries=max_network_retries
        )
    return SandboxProvider()
