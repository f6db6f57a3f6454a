"""The load: simulated people using the platform over its one origin, as the web client would.

Each person signs up, then until the deadline lists tickets, edits them, and buys others'
tickets; an order is then paid (``tok_visa``), declined (``tok_chargeDeclined``), cancelled
by its buyer, paid and cancelled at once, or left unpaid to expire. Requests a kill interrupts
(a connection error, 502/503/504) are counted and retried, with the same ``Idempotency-Key``
for an order; they are expected, never a failure of the run. Every other answer is counted
by route and status, so a 500 shows in the summary.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import httpx

from ticketing_common.http import outbound_client

INTERRUPTED = frozenset({502, 503, 504})
# How long one request keeps retrying through a kill, and how long an order or a payment
# waits for the service to hear of its ticket or order (both are eventually consistent).
RETRY_SECONDS = 45.0
CATCH_UP_SECONDS = 30.0
PASSWORD = "correct horse battery staple"
# What becomes of an order, and how often.
FATES = {"pay": 40, "decline": 10, "cancel": 20, "pay-and-cancel": 8, "expire": 22}


@dataclass
class LoadStats:
    outcomes: Counter[str] = field(default_factory=Counter)  # "order placed", "paid", ...
    answers: Counter[str] = field(default_factory=Counter)  # "POST /api/orders 201"
    interrupted: Counter[str] = field(default_factory=Counter)  # "POST /api/orders 503"

    def server_errors(self) -> dict[str, int]:
        """Answers that are neither the API's nor an interruption: a 500 is a bug."""
        return {a: n for a, n in self.answers.items() if a.split()[2].startswith("5")}


@dataclass
class Person:
    email: str
    cookie: str  # the session cookie, sent explicitly (the shared client keeps no jar)
    tickets: list[str] = field(default_factory=list)


class Api:
    """One HTTP client for everyone; each call carries its person's session."""

    def __init__(self, client: httpx.AsyncClient, stats: LoadStats) -> None:
        self.client = client
        self.stats = stats

    async def call(
        self,
        method: str,
        route: str,
        path: str,
        person: Person | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response | None:
        """The answer, retried through interruptions; None if they outlast RETRY_SECONDS."""
        all_headers = dict(headers or {})
        if person is not None:
            all_headers["Cookie"] = f"session={person.cookie}"
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                response = await self.client.request(method, path, json=json, headers=all_headers)
            except httpx.TransportError as exc:
                self.stats.interrupted[f"{method} {route} {type(exc).__name__}"] += 1
            else:
                if response.status_code not in INTERRUPTED:
                    self.stats.answers[f"{method} {route} {_answer(response)}"] += 1
                    return response
                self.stats.interrupted[f"{method} {route} {response.status_code}"] += 1
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def until_known(
        self, method: str, route: str, path: str, person: Person, **kwargs: Any
    ) -> httpx.Response | None:
        """Retry a 404 for a while: the service may not have heard of the ticket/order yet."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while True:
            response = await self.call(method, route, path, person, **kwargs)
            if response is None or response.status_code != 404 or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.3)


def _answer(response: httpx.Response) -> str:
    """The status, and for an error the first message: "400 (Order has expired)"."""
    if response.status_code < 400:
        return str(response.status_code)
    try:
        message = response.json()["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        message = "not in the error shape"
    return f"{response.status_code} ({message})"


def _session_cookie(response: httpx.Response) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        morsel = SimpleCookie(header).get("session")
        if morsel is not None:
            return morsel.value
    return None


async def sign_up(api: Api, number: int, run_id: str) -> Person | None:
    email = f"chaos-{run_id}-{number}@example.com"
    body = {"email": email, "password": PASSWORD}
    response = await api.call("POST", "/api/users/signup", "/api/users/signup", json=body)
    if response is not None and response.status_code == 400:
        # A retried sign-up whose first attempt went through: the account exists.
        response = await api.call("POST", "/api/users/signin", "/api/users/signin", json=body)
    cookie = _session_cookie(response) if response is not None else None
    if cookie is None:
        return None
    api.stats.outcomes["signed up"] += 1
    return Person(email, cookie)


class Shopper:
    """One person's actions, chosen by their own seeded random generator."""

    def __init__(self, api: Api, person: Person, rng: random.Random) -> None:
        self.api = api
        self.person = person
        self.rng = rng
        self.outcomes = api.stats.outcomes
        self._fates: set[asyncio.Task[None]] = set()

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            action = self.rng.choices(
                [self.list_ticket, self.edit_ticket, self.buy_ticket], weights=[3, 1, 6]
            )[0]
            await action()
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))  # pacing, not synchronisation
        # Payments and cancels already under way finish before the load ends.
        await asyncio.gather(*self._fates)

    def _price(self) -> str:
        return f"{self.rng.randint(5, 300)}.{self.rng.randint(0, 99):02d}"

    async def list_ticket(self) -> None:
        body = {"title": f"Show {self.rng.randint(1, 10_000)}", "price": self._price()}
        response = await self.api.call("POST", "/api/tickets", "/api/tickets", self.person, body)
        if response is not None and response.status_code == 201:
            self.person.tickets.append(response.json()["id"])
            self.outcomes["ticket listed"] += 1

    async def edit_ticket(self) -> None:
        if not self.person.tickets:
            return
        ticket_id = self.rng.choice(self.person.tickets)
        body = {"title": f"Show {self.rng.randint(1, 10_000)} (moved)", "price": self._price()}
        response = await self.api.call(
            "PUT", "/api/tickets/{id}", f"/api/tickets/{ticket_id}", self.person, body
        )
        if response is not None:
            edited = response.status_code == 200
            self.outcomes["ticket edited" if edited else "edit refused"] += 1

    async def buy_ticket(self) -> None:
        listed = await self.api.call("GET", "/api/tickets", "/api/tickets?limit=50", self.person)
        if listed is None or listed.status_code != 200:
            return
        others = [t["id"] for t in listed.json() if t["id"] not in self.person.tickets]
        if not others:
            return
        ticket_id = self.rng.choice(others)
        # One key for every retry of this order: a retried request never makes a second one.
        key = {"Idempotency-Key": str(uuid.UUID(int=self.rng.getrandbits(128)))}
        response = await self.api.until_known(
            "POST",
            "/api/orders",
            "/api/orders",
            self.person,
            json={"ticketId": ticket_id},
            headers=key,
        )
        if response is None or response.status_code != 201:
            self.outcomes["order refused"] += 1
            return
        self.outcomes["order placed"] += 1
        fate = self.rng.choices(list(FATES), weights=list(FATES.values()))[0]
        task = asyncio.create_task(self._decide(response.json()["id"], fate))
        self._fates.add(task)
        task.add_done_callback(self._fates.discard)

    async def _decide(self, order_id: str, fate: str) -> None:
        if fate == "pay":
            await self._pay(order_id, "tok_visa")
        elif fate == "decline":
            await self._pay(order_id, "tok_chargeDeclined")  # then left to expire
        elif fate == "cancel":
            await self._cancel(order_id)
        elif fate == "pay-and-cancel":  # the race payments settles with a refund or a void
            await asyncio.gather(self._pay(order_id, "tok_visa"), self._cancel(order_id))
        else:
            self.outcomes["left to expire"] += 1

    async def _pay(self, order_id: str, token: str) -> None:
        response = await self.api.until_known(
            "POST",
            "/api/payments",
            "/api/payments",
            self.person,
            json={"orderId": order_id, "token": token},
        )
        if response is not None:
            outcome = {201: "paid", 402: "declined"}.get(response.status_code, "payment refused")
            self.outcomes[outcome] += 1

    async def _cancel(self, order_id: str) -> None:
        response = await self.api.call(
            "DELETE", "/api/orders/{id}", f"/api/orders/{order_id}", self.person
        )
        if response is not None:
            cancelled = response.status_code == 204
            self.outcomes["cancelled by buyer" if cancelled else "cancel refused"] += 1


async def run_load(url: str, seed: int, people: int, seconds: float, stats: LoadStats) -> None:
    """``people`` shoppers at once against ``url`` for ``seconds``; outcomes into ``stats``."""
    deadline = time.monotonic() + seconds
    run_id = f"{seed}-{uuid.uuid4().hex[:6]}"  # fresh emails when re-run on the same data
    async with outbound_client(base_url=url, timeout=10) as client:
        api = Api(client, stats)
        await asyncio.gather(
            *(shop(api, n, run_id, random.Random(f"{seed}/{n}"), deadline) for n in range(people))
        )


async def shop(api: Api, number: int, run_id: str, rng: random.Random, deadline: float) -> None:
    """Sign up (again, should a kill make it fail), then shop until the deadline."""
    while time.monotonic() < deadline:
        person = await sign_up(api, number, run_id)
        if person is not None:
            await Shopper(api, person, rng).run(deadline)
            return
        await asyncio.sleep(0.5)
