"""The order page's payment form: the sandbox's test cards, or Stripe's Payment Element when its
publishable key is set (the card is typed in Stripe's frame; only a PaymentMethod id is posted).

Rendered straight from the template: the browser tests pay through the sandbox, and Stripe's
script cannot be loaded in a test.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from starlette.requests import Request

from client.api import Order, OrderTicket
from client.templating import environment


def order_page(stripe_key: str | None) -> str:
    order = Order(
        id=uuid.uuid4(),
        status="created",
        user_id=uuid.uuid4(),
        expires_at=datetime.now(UTC) + timedelta(minutes=10),
        ticket=OrderTicket(id=uuid.uuid4(), title="Show", price=Decimal("20.50")),
    )
    request = Request(
        {"type": "http", "method": "GET", "path": f"/orders/{order.id}", "headers": []}
    )
    return environment.get_template("order.html").render(
        request=request,
        user=None,
        lang="en",
        nonce="the-nonce",
        csrf_token="the-token",
        currency="eur",
        order=order,
        view="payable",
        seconds_left=600,
        stripe_key=stripe_key,
        errors=[],
    )


def test_without_stripe_the_sandbox_test_cards_are_offered() -> None:
    page = order_page(None)
    assert 'value="tok_visa"' in page and 'value="tok_chargeDeclined"' in page
    assert "js.stripe.com" not in page and "payment-element" not in page


def test_with_stripe_the_payment_element_takes_the_card() -> None:
    page = order_page("pk_test_abc")
    assert '<script src="https://js.stripe.com/v3/" nonce="the-nonce"></script>' in page
    assert 'data-stripe-key="pk_test_abc"' in page
    assert 'data-amount="2050"' in page and 'data-currency="eur"' in page
    assert 'id="payment-element"' in page
    assert '<input type="hidden" name="token" id="payment-token" value="">' in page
    assert "tok_visa" not in page
    # No field for a card number exists in our page: it is typed in Stripe's frame.
    assert "card-number" not in page and 'name="card' not in page
