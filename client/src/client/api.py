"""The typed calls the pages make to the services, server-side.

One ``Api`` per browser request: it forwards that person's ``session`` cookie as an explicit
header (the shared HTTP client keeps no cookie jar, so nobody's session reaches anyone else's
request), carries the request id, and turns answers into models or into one of two errors: an
:class:`ApiError` (the service's 4xx, in the common error shape, shown next to the form) or
:class:`ServiceDownError` (unreachable, timed out or a 5xx: the "try again" page).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import TypeAdapter, ValidationError

from client.settings import ClientSettings
from ticketing_common.auth import SESSION_COOKIE
from ticketing_common.models import CamelModel
from ticketing_common.observability import REQUEST_ID_HEADER

Service = Literal["auth", "tickets", "orders", "payments"]
T = TypeVar("T")

TIMEOUT = httpx.Timeout(5.0, connect=2.0)
PAGE_SIZE = 20
# A ticket just listed reaches orders by an event, a moment later; a buyer that fast is
# retried briefly (safe: the order carries an idempotency key).
ORDER_CATCH_UP_SECONDS = 5.0


class User(CamelModel):
    id: uuid.UUID
    email: str


class Ticket(CamelModel):
    id: uuid.UUID
    title: str
    price: Decimal
    user_id: uuid.UUID
    order_id: uuid.UUID | None
    version: int


class OrderTicket(CamelModel):
    id: uuid.UUID
    title: str
    price: Decimal


class Order(CamelModel):
    id: uuid.UUID
    status: Literal["created", "awaiting_payment", "cancelled", "complete"]
    user_id: uuid.UUID
    expires_at: datetime
    ticket: OrderTicket


class Sale(CamelModel):
    ticket: OrderTicket
    state: Literal["available", "reserved", "sold"]


@dataclass(frozen=True)
class TicketPage:
    tickets: list[Ticket]
    next_cursor: str | None


class ApiError(Exception):
    """A service refused the request (4xx); ``errors`` is its common error shape."""

    def __init__(self, status_code: int, errors: list[dict[str, str]]) -> None:
        super().__init__(f"{status_code}: {errors}")
        self.status_code = status_code
        self.errors = errors


class ServiceDownError(Exception):
    def __init__(self, service: Service, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service


@dataclass
class Api:
    http: httpx.AsyncClient
    settings: ClientSettings
    session: str | None
    request_id: str | None
    # Set-Cookie headers from auth, for the page to pass on to the browser.
    set_cookies: list[str] = field(default_factory=list)

    async def _call(
        self,
        method: str,
        service: Service,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if self.session:
            sent["Cookie"] = f"{SESSION_COOKIE}={self.session}"
        if self.request_id:
            sent[REQUEST_ID_HEADER] = self.request_id
        base = str(getattr(self.settings, f"{service}_url")).rstrip("/")
        try:
            response = await self.http.request(
                method, base + path, json=json, params=params, headers=sent
            )
        except httpx.HTTPError as exc:
            raise ServiceDownError(service, repr(exc)) from exc
        if response.status_code >= 500:
            raise ServiceDownError(service, f"answered {response.status_code}")
        if response.status_code >= 400:
            raise ApiError(response.status_code, _errors(response))
        self.set_cookies += response.headers.get_list("set-cookie")
        return response

    async def _fetch(
        self, model: type[T], method: str, service: Service, path: str, **kwargs: Any
    ) -> T:
        parsed: T = _parse(model, service, await self._call(method, service, path, **kwargs))
        return parsed

    # -- auth ----------------------------------------------------------------------------

    async def sign_up(self, email: str, password: str) -> User:
        body = {"email": email, "password": password}
        return await self._fetch(User, "POST", "auth", "/api/users/signup", json=body)

    async def sign_in(self, email: str, password: str) -> User:
        body = {"email": email, "password": password}
        return await self._fetch(User, "POST", "auth", "/api/users/signin", json=body)

    async def sign_out(self) -> None:
        await self._call("POST", "auth", "/api/users/signout")

    # -- tickets -------------------------------------------------------------------------

    async def tickets_for_sale(self, cursor: str | None) -> TicketPage:
        params: dict[str, Any] = {"limit": PAGE_SIZE} | ({"cursor": cursor} if cursor else {})
        response = await self._call("GET", "tickets", "/api/tickets", params=params)
        next_link: str = response.links.get("next", {}).get("url", "")
        next_cursor = parse_qs(urlsplit(next_link).query).get("cursor", [None])[0]
        return TicketPage(_parse(list[Ticket], "tickets", response), next_cursor)

    async def ticket(self, ticket_id: uuid.UUID) -> Ticket:
        return await self._fetch(Ticket, "GET", "tickets", f"/api/tickets/{ticket_id}")

    async def create_ticket(self, title: str, price: str) -> Ticket:
        body = {"title": title, "price": price}
        return await self._fetch(Ticket, "POST", "tickets", "/api/tickets", json=body)

    async def update_ticket(self, ticket_id: uuid.UUID, title: str, price: str) -> Ticket:
        body = {"title": title, "price": price}
        path = f"/api/tickets/{ticket_id}"
        return await self._fetch(Ticket, "PUT", "tickets", path, json=body)

    # -- orders --------------------------------------------------------------------------

    async def create_order(self, ticket_id: uuid.UUID, idempotency_key: str) -> Order:
        deadline = time.monotonic() + ORDER_CATCH_UP_SECONDS
        while True:
            try:
                response = await self._call(
                    "POST",
                    "orders",
                    "/api/orders",
                    json={"ticketId": str(ticket_id)},
                    headers={"Idempotency-Key": idempotency_key},
                )
                parsed: Order = _parse(Order, "orders", response)
                return parsed
            except ApiError as exc:
                if exc.status_code != 404 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.25)

    async def orders(self) -> list[Order]:
        return await self._fetch(list[Order], "GET", "orders", "/api/orders")

    async def order(self, order_id: uuid.UUID) -> Order:
        return await self._fetch(Order, "GET", "orders", f"/api/orders/{order_id}")

    async def cancel_order(self, order_id: uuid.UUID) -> None:
        await self._call("DELETE", "orders", f"/api/orders/{order_id}")

    async def sales(self) -> list[Sale]:
        return await self._fetch(list[Sale], "GET", "orders", "/api/orders/sales")

    # -- payments ------------------------------------------------------------------------

    async def pay(self, order_id: uuid.UUID, token: str) -> None:
        body = {"orderId": str(order_id), "token": token}
        await self._call("POST", "payments", "/api/payments", json=body)


def _errors(response: httpx.Response) -> list[dict[str, str]]:
    try:
        errors = response.json()["errors"]
        return [{k: str(v) for k, v in e.items() if k in ("message", "field")} for e in errors]
    except (ValueError, KeyError, TypeError, AttributeError):
        return [{"message": f"Request refused ({response.status_code})"}]


def _parse(model: Any, service: Service, response: httpx.Response) -> Any:
    try:
        return TypeAdapter(model).validate_json(response.content)
    except ValidationError as exc:
        raise ServiceDownError(service, f"unexpected answer: {exc}") from exc
