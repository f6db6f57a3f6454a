"""The Stripe provider (see ``providers``): PaymentIntents through the official SDK.

In a module of its own so that only a process with a ``STRIPE_KEY`` loads the SDK.
"""

from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal

import stripe

from payments.providers import (
    PAYMENT_METHOD_PREFIX,
    AmountTooLargeError,
    AmountTooSmallError,
    IntentClosedError,
    InvalidPaymentTokenError,
    PaymentDeclinedError,
    PaymentRejectedError,
    ProviderUnavailableError,
    to_minor_units,
)
from ticketing_common.http import cookie_jar_keeping_nothing

# Stripe failures worth retrying: unreachable, timed out, rate limited or failing on its side.
_UNAVAILABLE = (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError)


class StripeProvider:
    """Stripe PaymentIntents through the official SDK (its async client, off no thread)."""

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        timeout: float = 5.0,
        max_network_retries: int = 1,
    ) -> None:
        http_client = stripe.HTTPXClient(timeout=timeout)
        # The SDK builds its own httpx client, with a cookie jar: it would send Stripe's
        # cookies from one buyer's call with the next. Like every outbound client here
        # (ticketing_common.http), it keeps none.
        http_client._client_async.cookies = cookie_jar_keeping_nothing()
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=http_client,
            # The SDK retries network errors and 409s (a concurrent request with the same
            # idempotency key) with the same key: safe, never a second charge. Few retries and
            # a short timeout keep one call well inside a consumer handler's time budget; the
            # consumer (or the buyer) retries the rest.
            max_network_retries=max_network_retries,
        )

    async def prepare(self, *, order_id: uuid.UUID, amount: Decimal, currency: str) -> str:
        try:
            intent = await self._client.v1.payment_intents.create_async(
                {
                    "amount": to_minor_units(amount),
                    "currency": currency,
                    "allowed_payment_method_types": ["card"],
                    "metadata": {"order_id": str(order_id)},
                },
                {"idempotency_key": f"order-{order_id}"},
            )
        except stripe.InvalidRequestError as exc:
            # Stripe will never accept this intent (e.g. below its minimum charge).
            raise _rejected(exc) from exc
        except _UNAVAILABLE as exc:
            raise ProviderUnavailableError() from exc
        return intent.id

    async def confirm(self, *, intent_ref: str, token: str) -> None:
        token_digest = hashlib.sha256(token.encode()).hexdigest()[:32]
        try:
            # A card token becomes a PaymentMethod, which can pay one intent only. The key is
            # per intent and token: a retry of this attempt gets the same PaymentMethod back,
            # another order paid with the same (test) token gets a new one.
            if token.startswith(PAYMENT_METHOD_PREFIX):
                # Made in the browser by Stripe's Payment Element: used as it is.
                method_id = token
            else:
                method = await self._client.v1.payment_methods.create_async(
                    {"type": "card", "card": {"token": token}},
                    {"idempotency_key": f"payment-method-{intent_ref}-{token_digest}"},
                )
                method_id = method.id
            intent = await self._client.v1.payment_intents.confirm_async(
                intent_ref,
                {"payment_method": method_id},
                {"idempotency_key": f"confirm-{intent_ref}-{method_id}"},
            )
        except stripe.CardError as exc:
            raise PaymentDeclinedError() from exc
        except stripe.InvalidRequestError as exc:
            if exc.code == "payment_intent_unexpected_state":
                # Paid by a concurrent attempt (fine: once) or cancelled with its order.
                status = (await self._retrieve(intent_ref)).status
                if status == "succeeded":
                    return
                if status == "canceled":
                    raise IntentClosedError(intent_ref) from exc
                raise ProviderUnavailableError() from exc
            if "token" in (exc.param or "") or exc.code in {
                "resource_missing",
                "token_already_used",
            }:
                raise InvalidPaymentTokenError() from exc
            raise _rejected(exc) from exc
        except _UNAVAILABLE as exc:
            raise ProviderUnavailableError() from exc
        if intent.status != "succeeded":
            # requires_action (3-D Secure) cannot be completed by a server-side token charge.
            raise PaymentDeclinedError("Your card needs an authentication this checkout cannot do")

    async def release(self, *, intent_ref: str, paid: bool) -> str | None:
        # Stripe knows better than our record (a crash may have cut off a capture's record).
        try:
            return await self._release(intent_ref)
        except _UNAVAILABLE as exc:
            raise ProviderUnavailableError() from exc

    async def _release(self, intent_ref: str) -> str | None:
        intent = await self._retrieve(intent_ref)
        if intent.status == "canceled":
            return None
        if intent.status != "succeeded":
            try:
                await self._client.v1.payment_intents.cancel_async(
                    intent_ref, options={"idempotency_key": f"cancel-{intent_ref}"}
                )
                return None
            except stripe.InvalidRequestError as exc:
                # It got paid between our look and the cancel: refund instead.
                if exc.code != "payment_intent_unexpected_state":
                    raise
                if (await self._retrieve(intent_ref)).status != "succeeded":
                    raise
        refund = await self._client.v1.refunds.create_async(
            {"payment_intent": intent_ref}, {"idempotency_key": f"refund-{intent_ref}"}
        )
        return refund.id

    async def _retrieve(self, intent_ref: str) -> stripe.PaymentIntent:
        try:
            return await self._client.v1.payment_intents.retrieve_async(intent_ref)
        except _UNAVAILABLE as exc:
            raise ProviderUnavailableError() from exc


def _rejected(exc: stripe.InvalidRequestError) -> PaymentRejectedError:
    if exc.code == "amount_too_small":
        return AmountTooSmallError()
    if exc.code == "amount_too_large":
        return AmountTooLargeError()
    return PaymentRejectedError()
