"""The stripe provider, through the official SDK, against a local fake of Stripe's HTTP API.

These check what our code sends (idempotency keys, amount in cents, currency, the token) and
that Stripe's answers map to the right outcomes; never the real Stripe.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from nats.js import JetStreamContext
from pydantic import SecretStr

from payments.app import create_app
from payments.providers import IntentClosedError, StripeProvider
from payments.settings import PaymentsSettings
from ticketing_common.testing import EventProbe, ServiceHarness

from .conftest import Orders
from .fake_stripe import FakeStripe
from .test_payments import message, pay

API_KEY = "sk_test_0123456789"


@pytest.fixture
async def stripe_fake() -> AsyncIterator[FakeStripe]:
    async with FakeStripe().serve() as fake:
        yield fake


@pytest.fixture
async def stripe_client(
    settings: PaymentsSettings, stripe_fake: FakeStripe, jetstream: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(
            update={"stripe_key": SecretStr(API_KEY), "stripe_api_base": stripe_fake.url}
        )
    )
    assert isinstance(app.state.payment_provider, StripeProvider)  # STRIPE_KEY set -> stripe
    async with ServiceHarness(app).client() as client:
        yield client


async def test_pays_with_a_payment_intent(
    stripe_client: httpx.AsyncClient,
    stripe_fake: FakeStripe,
    orders: Orders,
    event_probe: EventProbe,
) -> None:
    order_id, cookies = await orders.create(price="1234.56")

    r = await pay(stripe_client, order_id, cookies)

    assert r.status_code == 201, r.text
    [create] = stripe_fake.calls("POST", "/v1/payment_intents")[:1]
    assert create.path == "/v1/payment_intents"
    assert create.headers["authorization"] == f"Bearer {API_KEY}"
    assert create.headers["idempotency-key"] == f"order-{order_id}"
    assert create.form["amount"] == "123456"  # cents, from the exact decimal
    assert create.form["currency"] == "usd"
    assert create.form["metadata[order_id]"] == str(order_id)
    assert create.form["allowed_payment_method_types[0]"] == "card"
    [confirm] = [c for c in stripe_fake.requests if c.path.endswith("/confirm")]
    [intent_id] = stripe_fake.captures
    assert confirm.path == f"/v1/payment_intents/{intent_id}/confirm"
    [method_call] = stripe_fake.calls("POST", "/v1/payment_methods")
    assert method_call.form == {"type": "card", "card[token]": "tok_visa"}
    [method_id] = stripe_fake.methods
    assert confirm.form == {"payment_method": method_id}
    assert confirm.headers["idempotency-key"] == f"confirm-{intent_id}-{method_id}"
    [payment] = await orders.payments(order_id)
    assert payment["provider"] == "stripe" and payment["intent_ref"] == intent_id
    event = await event_probe.wait_for("payment.created")
    assert event.data["providerRef"] == intent_id


async def test_declined_is_402_then_another_card_pays_the_same_intent(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: Orders
) -> None:
    order_id, cookies = await orders.create()
    r = await pay(stripe_client, order_id, cookies, token="tok_chargeDeclined")
    assert r.status_code == 402 and message(r) == "Your card was declined"
    assert await orders.payments(order_id) == [] and stripe_fake.captures == []

    r = await pay(stripe_client, order_id, cookies)
    assert r.status_code == 201, r.text
    # One intent for the order: the second attempt replayed its creation (same key).
    assert len(stripe_fake.intents) == 1
    assert len(stripe_fake.captures) == 1


async def test_unknown_token_is_400(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: Orders
) -> None:
    order_id, cookies = await orders.create()
    r = await pay(stripe_client, order_id, cookies, token="tok_nonsense")
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "token"
    assert await orders.payments(order_id) == []


async def test_double_submit_charges_once(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: Orders
) -> None:
    order_id, cookies = await orders.create()

    responses = await asyncio.gather(*(pay(stripe_client, order_id, cookies) for _ in range(8)))

    assert sorted(r.status_code for r in responses) == [201] + [400] * 7, [
        r.text for r in responses
    ]
    assert len(stripe_fake.intents) == 1 and len(stripe_fake.captures) == 1
    assert {
        c.headers["idempotency-key"]
        for c in stripe_fake.calls("POST", "/v1/payment_intents")
        if c.path == "/v1/payment_intents"
    } == {f"order-{order_id}"}


async def test_cancelled_order_is_refunded_at_stripe(
    stripe_client: httpx.AsyncClient,
    stripe_fake: FakeStripe,
    orders: Orders,
    event_probe: EventProbe,
) -> None:
    order_id, cookies = await orders.create(price="20.00")
    assert (await pay(stripe_client, order_id, cookies)).status_code == 201
    [intent_id] = stripe_fake.captures

    await orders.cancel(order_id)

    [refund_call] = stripe_fake.calls("POST", "/v1/refunds")
    assert refund_call.form == {"payment_intent": intent_id}
    assert refund_call.headers["idempotency-key"] == f"refund-{intent_id}"
    [refund] = stripe_fake.refunds
    [payment] = await orders.payments(order_id)
    assert payment["status"] == "refunded" and payment["refund_ref"] == refund["id"]
    event = await event_probe.wait_for("payment.refunded")
    assert event.data["providerRef"] == refund["id"]


async def test_cancelling_an_unpaid_attempt_cancels_the_intent(
    stripe_fake: FakeStripe,
) -> None:
    provider = StripeProvider(API_KEY, api_base=stripe_fake.url)
    intent = await provider.prepare(order_id=uuid.uuid4(), amount=Decimal("3.00"), currency="usd")
    assert await provider.release(intent_ref=intent) is None
    assert stripe_fake.intents[intent]["status"] == "canceled"
    assert stripe_fake.calls("POST", f"/v1/payment_intents/{intent}/cancel")
    # A payment that arrives after that takes nothing.
    with pytest.raises(IntentClosedError):
        await provider.confirm(intent_ref=intent, token="tok_visa")
    assert stripe_fake.captures == []
