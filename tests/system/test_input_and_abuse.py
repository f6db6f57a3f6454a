"""Abuse through the edge: the platform as ``make up`` runs it, attacked over HTTP.

Different clients are different source addresses on the loopback network (127.0.0.x): the
edge reports the address it saw to the services, as the Ingress does in the cluster.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from .local_platform import LocalPlatform, wait_until

pytestmark = pytest.mark.timeout(420)

PASSWORD = "correct horse battery"
# What `make up` runs with: auth's defaults.
MAX_FAILURES_PER_EMAIL = 5
MAX_FAILURES_PER_CLIENT = 20
WINDOW_SECONDS = 15 * 60

ClientFrom = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def client_from(platform: LocalPlatform) -> AsyncIterator[ClientFrom]:
    """HTTP clients of the platform, each connecting from the loopback address given."""
    clients: list[httpx.AsyncClient] = []

    def make(address: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=address)
        clients.append(httpx.AsyncClient(base_url=platform.url, transport=transport, timeout=60))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def seller(platform: LocalPlatform) -> Iterator[httpx.Client]:
    with platform.client() as http:
        email = f"seller-{uuid.uuid4().hex[:10]}@example.com"
        response = http.post("/api/users/signup", json={"email": email, "password": PASSWORD})
        assert response.status_code == 201, response.text
        yield http


async def sign_up(client: httpx.AsyncClient) -> str:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    response = await client.post("/api/users/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    client.cookies.clear()
    return email


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, **headers: str
) -> httpx.Response:
    return await client.post(
        "/api/users/signin", json={"email": email, "password": password}, headers=headers
    )


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["errors"][0]["message"].startswith("Too many failed sign-in attempts")
    assert 1 <= int(response.headers["retry-after"]) <= WINDOW_SECONDS


def error_fields(response: httpx.Response) -> set[str | None]:
    body = response.json()
    assert set(body) == {"errors"} and all(e["message"] for e in body["errors"]), body
    return {e.get("field") for e in body["errors"]}


# -- sign-in throttling ---------------------------------------------------------------------


async def test_an_attacker_hammering_an_account_does_not_lock_out_its_owner(
    client_from: ClientFrom,
) -> None:
    attacker, owner = client_from("127.0.0.21"), client_from("127.0.0.22")
    email = await sign_up(owner)

    guesses = [sign_in(attacker, email, f"guess-{i:04d}") for i in range(30)]
    *answers, owners = await asyncio.gather(*guesses, sign_in(owner, email))

    assert owners.status_code == 200, owners.text
    assert "session" in owners.cookies
    statuses = [a.status_code for a in answers]
    assert statuses.count(400) == MAX_FAILURES_PER_EMAIL, statuses
    assert statuses.count(429) == 30 - MAX_FAILURES_PER_EMAIL, statuses
    # The attacker stays out even with the right password; the owner keeps getting in.
    assert_throttled(await sign_in(attacker, email))
    assert (await sign_in(owner, email)).status_code == 200


async def test_forged_forwarding_headers_do_not_escape_the_per_client_limit(
    client_from: ClientFrom,
) -> None:
    sprayer, someone = client_from("127.0.0.23"), client_from("127.0.0.24")
    victim = await sign_up(someone)
    tries = MAX_FAILURES_PER_CLIENT + 10

    def forged(i: int) -> dict[str, str]:
        address = f"198.51.100.{i}"
        return {"X-Forwarded-For": address, "X-Real-IP": address, "Forwarded": f"for={address}"}

    answers = await asyncio.gather(
        *(
            sign_in(
                sprayer,
                f"sprayed-{i}-{uuid.uuid4().hex[:6]}@example.com",
                "Summer2026!",
                **forged(i),
            )
            for i in range(tries)
        )
    )

    statuses = [a.status_code for a in answers]
    assert statuses.count(400) == MAX_FAILURES_PER_CLIENT, statuses
    assert statuses.count(429) == tries - MAX_FAILURES_PER_CLIENT, statuses
    assert_throttled(await sign_in(sprayer, victim, **forged(250)))
    assert (await sign_in(someone, victim)).status_code == 200


# -- strict input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "price",
    ["1_000", "\uff11\uff12", "\u0663", " 12", "12 ", "+12", "-12", "1e3", "12.345", 12.345, True],
)
def test_a_price_that_is_not_plain_digits_is_refused(seller: httpx.Client, price: Any) -> None:
    response = seller.post("/api/tickets", json={"title": "Concert", "price": price})
    assert response.status_code == 400, response.text
    assert error_fields(response) == {"price"}


@pytest.mark.parametrize(
    ("price", "stored"), [("1000", "1000.00"), ("25.5", "25.50"), (25.5, "25.50")]
)
def test_a_plain_price_is_taken_exactly(seller: httpx.Client, price: Any, stored: str) -> None:
    response = seller.post("/api/tickets", json={"title": "Concert", "price": price})
    assert response.status_code == 201, response.text
    assert response.json()["price"] == stored


@pytest.mark.parametrize(
    "title",
    [
        "\u202eexe.gnp",
        "two\u202dway",
        "\u200b",
        "\u200b\u200d\u2060",
        "\u0085",
        "next\u0085line",
        "two\nlines",
        "nul\x00",
    ],
)
def test_a_title_with_controls_bidi_overrides_or_nothing_visible_is_refused(
    seller: httpx.Client, title: str
) -> None:
    response = seller.post("/api/tickets", json={"title": title, "price": "10"})
    assert response.status_code == 400, response.text
    assert error_fields(response) == {"title"}


@pytest.mark.parametrize(
    "title", ["Café crème", "日本語のコンサート", "Rock 🎸", "👩\u200d👩\u200d👧"]
)
def test_a_title_in_any_script_is_taken_as_written(seller: httpx.Client, title: str) -> None:
    response = seller.post("/api/tickets", json={"title": title, "price": "10"})
    assert response.status_code == 201, response.text
    ticket = seller.get(f"/api/tickets/{response.json()['id']}").json()
    assert ticket["title"] == title


def test_a_body_bigger_than_the_api_needs_is_refused(seller: httpx.Client) -> None:
    # Under any edge's cap, over the service's own: the service answers, in the common shape.
    body = {"title": "Concert", "price": "10", "notes": "x" * 200_000}
    response = seller.post("/api/tickets", json=body)
    assert response.status_code == 413, response.text
    assert response.json() == {"errors": [{"message": "Request body too large"}]}


def test_a_9_mb_body_is_refused(seller: httpx.Client) -> None:
    body = {"title": "x" * 9_000_000, "price": "10"}
    try:
        response = seller.post("/api/tickets", json=body)
    except httpx.TransportError:
        return  # an edge may close the connection rather than read 9 MB to answer it
    assert response.status_code == 413, response.text


# -- logs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("breaker", ["%0a", "%0d%0a", "%c2%85", "%e2%80%a8"])
def test_a_path_cannot_forge_a_line_in_the_logs(platform: LocalPlatform, breaker: str) -> None:
    marker = f"FORGED-{uuid.uuid4().hex}"
    forged = f"INFO    ticketing.access: GET /api/users/currentuser status=200 {marker}"
    with platform.client() as http:
        response = http.get("/api/tickets/" + breaker + forged.replace(" ", "%20"))
    assert response.status_code in (400, 404), response.text

    def lines_with_marker() -> list[str]:
        return [line for line in platform.output().splitlines() if marker in line]

    if "normal form" in response.text:
        # The edge refused the path (a line break is not a normal path): it reached no service,
        # and nothing it carried became a line of its own in any log.
        for line in lines_with_marker():
            assert not line.split(" ", 1)[-1].lstrip().startswith("INFO"), line
        return
    [line] = wait_until(lines_with_marker, 30, "the request in the tickets service's log")
    # One record: the access line itself, with the line break escaped inside it (written by
    # tickets, or by its replica "tickets-2" on a REPLICAS=2 platform).
    assert re.match(r"tickets(-\d+)? +\| ", line) and "ticketing.access:" in line
    assert "GET /api/tickets/\\" in line
    assert line.index("ticketing.access:") < line.index("GET /api/tickets/") < line.index(marker)
