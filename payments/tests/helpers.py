"""What the payments tests do again and again: pay for an order, read the one error."""

from __future__ import annotations

import uuid

import httpx

from ticketing_common.testing.stand_ins import OrdersStandIn

PAY = "/api/payments"


async def pay(
    client: httpx.AsyncClient, order_id: uuid.UUID, cookies: dict[str, str], token: str = "tok_visa"
) -> httpx.Response:
    return await client.post(
        PAY, json={"orderId": str(order_id), "token": token}, headers=cookie_header(cookies)
    )


async def paid(
    client: httpx.AsyncClient, orders: OrdersStandIn, price: str = "12.50"
) -> tuple[httpx.Response, uuid.UUID, dict[str, str]]:
    """A new order at ``price``, paid: the 201 answer; and the order with its buyer's cookies."""
    order_id, cookies = await orders.create(price=price)
    r = await pay(client, order_id, cookies)
    assert r.status_code == 201, r.text
    return r, order_id, cookies


async def refused(
    client: httpx.AsyncClient, orders: OrdersStandIn, token: str
) -> tuple[httpx.Response, uuid.UUID, dict[str, str]]:
    """A new order paid with a ``token`` the provider refuses: the answer, having checked that no
    payment was recorded; and the order with its buyer's cookies, to try again."""
    order_id, cookies = await orders.create()
    r = await pay(client, order_id, cookies, token=token)
    assert await orders.payments(order_id) == []
    return r, order_id, cookies


async def declined_then_paid(client: httpx.AsyncClient, orders: OrdersStandIn) -> httpx.Response:
    """A new order's card declined (402, nothing recorded), then another card for it: that one's
    201 answer. The order's one intent does not lock the buyer out."""
    r, order_id, cookies = await refused(client, orders, "tok_chargeDeclined")
    assert r.status_code == 402 and message(r) == "Your card was declined"
    r = await pay(client, order_id, cookies)
    assert r.status_code == 201, r.text
    return r


def cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


def message(response: httpx.Response) -> str:
    errors = response.json()["errors"]
    assert len(errors) == 1
    return str(errors[0]["message"])
