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
from pydantic import SecretStr, ValidationError

from payments.app import create_app, provider_for
from payments.providers import IntentClosedError, ProviderUnavailableError
from payments.settings import PaymentsSettings
from payments.stripe_provider import StripeProvider
from ticketing_common.events import OrderCancelled, OrderCancelledTicket
from ticketing_common.testing import EventProbe, ServiceHarness
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.stand_ins import OrdersStandIn

from .fake_stripe import FakeStripe
from .helpers import declined_then_paid, message, paid, pay, refused

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
    orders: OrdersStandIn,
    event_probe: EventProbe,
) -> None:
    _, order_id, _ = await paid(stripe_client, orders, price="1234.56")

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
    # Stripe's answers set a cookie; no request of ours, of any buyer, ever sends one back.
    assert len(stripe_fake.requests) >= 3
    assert [r.path for r in stripe_fake.requests if "cookie" in r.headers] == []
    event = await event_probe.wait_for("payment.created")
    assert event.data["providerRef"] == intent_id


async def test_a_payment_method_made_in_the_browser_is_used_as_it_is(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: OrdersStandIn
) -> None:
    # Stripe's Payment Element created it from the card the buyer typed in Stripe's frame.
    stripe_fake.methods["pm_from_the_browser"] = "tok_visa"
    order_id, cookies = await orders.create()

    r = await pay(stripe_client, order_id, cookies, token="pm_from_the_browser")

    assert r.status_code == 201, r.text
    assert stripe_fake.calls("POST", "/v1/payment_methods") == []
    [confirm] = [c for c in stripe_fake.requests if c.path.endswith("/confirm")]
    assert confirm.form == {"payment_method": "pm_from_the_browser"}
    assert len(stripe_fake.captures) == 1


async def test_declined_is_402_then_another_card_pays_the_same_intent(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: OrdersStandIn
) -> None:
    await declined_then_paid(stripe_client, orders)
    # One intent for the order: the second attempt replayed its creation (same key).
    assert len(stripe_fake.intents) == 1
    assert len(stripe_fake.captures) == 1


async def test_unknown_token_is_400(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: OrdersStandIn
) -> None:
    r, _, _ = await refused(stripe_client, orders, "tok_nonsense")
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "token"


async def test_double_submit_charges_once(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: OrdersStandIn
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
    orders: OrdersStandIn,
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
    assert await provider.release(intent_ref=intent, paid=False) is None
    assert stripe_fake.intents[intent]["status"] == "canceled"
    assert stripe_fake.calls("POST", f"/v1/payment_intents/{intent}/cancel")
    # A payment that arrives after that takes nothing.
    with pytest.raises(IntentClosedError):
        await provider.confirm(intent_ref=intent, token="tok_visa")
    assert stripe_fake.captures == []


async def test_two_orders_paid_with_the_same_test_token(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: OrdersStandIn
) -> None:
    # A PaymentMethod pays one intent only: each order needs its own, from the same token.
    first, first_cookies = await orders.create()
    second, second_cookies = await orders.create()

    assert (await pay(stripe_client, first, first_cookies)).status_code == 201
    r = await pay(stripe_client, second, second_cookies)

    assert r.status_code == 201, r.text
    assert len(stripe_fake.captures) == 2
    assert len(set(stripe_fake.method_used_by.values())) == 2  # one PaymentMethod per intent
    keys = [c.headers["idempotency-key"] for c in stripe_fake.calls("POST", "/v1/payment_methods")]
    assert len(set(keys)) == 2


async def test_a_retried_attempt_reuses_its_payment_method(stripe_fake: FakeStripe) -> None:
    provider = StripeProvider(API_KEY, api_base=stripe_fake.url)
    intent = await provider.prepare(order_id=uuid.uuid4(), amount=Decimal("3.00"), currency="usd")
    await provider.confirm(intent_ref=intent, token="tok_visa")
    await provider.confirm(intent_ref=intent, token="tok_visa")  # a retry: paid already, fine
    assert len(stripe_fake.methods) == 1 and stripe_fake.captures == [intent]


async def test_amount_below_stripes_minimum_is_400_not_try_again(
    stripe_client: httpx.AsyncClient, stripe_fake: FakeStripe, orders: OrdersStandIn
) -> None:
    order_id, cookies = await orders.create(price="0.30")

    r = await pay(stripe_client, order_id, cookies)

    assert r.status_code == 400, r.text
    assert message(r) == "The amount is below the minimum the payment provider accepts"
    assert stripe_fake.intents == {} and await orders.payments(order_id) == []


async def test_refund_during_a_stripe_outage_is_retried_until_it_succeeds(
    settings: PaymentsSettings,
    stripe_fake: FakeStripe,
    jetstream: JetStreamContext,
    orders: OrdersStandIn,
    event_probe: EventProbe,
) -> None:
    settings = settings.model_copy(
        update={
            "stripe_key": SecretStr(API_KEY),
            "stripe_api_base": stripe_fake.url,
            "consumer_max_deliveries": 2,
        }
    )
    async with ServiceHarness(create_app(settings)).client() as client:
        order_id, cookies = await orders.create()
        assert (await pay(client, order_id, cookies)).status_code == 201
        [intent_id] = stripe_fake.captures

        stripe_fake.down = True
        await orders.emit(
            OrderCancelled(id=order_id, version=1, ticket=OrderCancelledTicket(id=uuid.uuid4()))
        )
        looks = f"/v1/payment_intents/{intent_id}"

        async def delivered_past_the_limit() -> bool:
            # Each delivery looks the intent up: at most 2 requests (1 SDK retry) per delivery.
            return len(stripe_fake.calls("GET", looks)) > 2 * settings.consumer_max_deliveries

        await eventually(delivered_past_the_limit, timeout=20)
        assert await orders.db.fetch("SELECT 1 FROM parked_events") == []
        [payment] = await orders.payments(order_id)
        assert payment["status"] == "succeeded"  # nothing recorded while Stripe is away

        stripe_fake.down = False
        refunded = await event_probe.wait_for("payment.refunded", timeout=30)

    [payment] = await orders.payments(order_id)
    assert payment["status"] == "refunded" and refunded.data["providerRef"] == payment["refund_ref"]
    assert len(stripe_fake.refunds) == 1
    assert await orders.db.fetch("SELECT 1 FROM parked_events") == []


async def test_a_hanging_stripe_call_is_cut_short(
    settings: PaymentsSettings, stripe_fake: FakeStripe
) -> None:
    provider = provider_for(
        settings.model_copy(
            update={
                "stripe_key": SecretStr(API_KEY),
                "stripe_api_base": stripe_fake.url,
                "provider_timeout_seconds": 0.3,
            }
        )
    )
    stripe_fake.delay = 30
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderUnavailableError):
        await provider.prepare(order_id=uuid.uuid4(), amount=Decimal("3.00"), currency="usd")
    # One try and one retry, each cut at the timeout, not the 30s the fake Stripe would take
    # (the bound is that, not a speed requirement: a loaded machine is far inside it).
    assert asyncio.get_running_loop().time() - started < 25
    assert len(stripe_fake.calls("POST", "/v1/payment_intents")) == 2


def test_a_provider_call_fits_inside_a_handlers_time_budget(settings: PaymentsSettings) -> None:
    defaults = PaymentsSettings(jwt_key=settings.jwt_key)
    assert (defaults.provider_timeout_seconds, defaults.provider_max_network_retries) == (5.0, 1)
    assert defaults.consumer_ack_wait_seconds == 60
    with pytest.raises(ValidationError, match="handler's budget"):
        PaymentsSettings(
            **(
                settings.model_dump()
                | {"provider_timeout_seconds": 20, "consumer_ack_wait_seconds": 30}
            )
        )


@pytest.mark.parametrize("currency", ["jpy", "kwd"])
def test_a_currency_without_two_decimals_is_refused(
    settings: PaymentsSettings, currency: str
) -> None:
    """Amounts are sent in hundredths: 12.50 JPY would be charged as 1250 yen."""
    with pytest.raises(ValidationError, match="two decimal places"):
        PaymentsSettings(**(settings.model_dump() | {"currency": currency}))
