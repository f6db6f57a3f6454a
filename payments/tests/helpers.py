"""What the payments tests do again and again: pay for an order, read the one error."""

from __future__ import annotations

import uuid

import httpx

PAY = "/api/payments"


async def pay(
    client: httpx.AsyncClient, order_id: uuid.UUID, cookies: dict[str, str], token: str = "tok_visa"
) -> httpx.Response:
    return await client.post(
        PAY, json={"orderId": str(order_id), "token": token}, headers=cookie_header(cookies)
    )


def cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


def message(response: httpx.Response) -> str:
    errors = response.json()["errors"]
    assert len(errors) == 1
    return str(errors[0]["message"])
