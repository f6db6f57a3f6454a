"""The local edge: routes by the one table and forwards as ingress-nginx would."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from starlette.types import Message, Scope

from ticketing_common.embedded import free_port
from ticketing_local.edge import Edge
from ticketing_local.routing import RoutingTable


def test_the_table_routes_by_whole_path_segments_longest_prefix_first() -> None:
    table = RoutingTable.load()
    routed = {
        path: (r.service if (r := table.match(path)) else None)
        for path in [
            "/api/users",
            "/api/users/signup",
            "/api/usersx",
            "/api/tickets/abc",
            "/api/orders",
            "/api/payments",
            "/",
            "/tickets/new",
        ]
    }
    assert routed == {
        "/api/users": "auth",
        "/api/users/signup": "auth",
        "/api/usersx": "client",
        "/api/tickets/abc": "tickets",
        "/api/orders": "orders",
        "/api/payments": "payments",
        "/": "client",
        "/tickets/new": "client",
    }


async def echo(request: Request) -> JSONResponse:
    """A stand-in service that tells what it received and sets two cookies."""
    response = JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "body": (await request.body()).decode(),
            "headers": dict(request.headers),
            "raw_headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
        },
        status_code=201,
    )
    response.set_cookie("session", "abc")
    response.set_cookie("other", "def")
    return response


UPSTREAM = Starlette(routes=[StarletteRoute("/{path:path}", echo, methods=["GET", "POST"])])


@pytest.fixture
async def edge() -> AsyncIterator[httpx.AsyncClient]:
    app = Edge(
        RoutingTable.load(),
        {"auth": "http://auth.internal", "tickets": f"http://127.0.0.1:{free_port()}"},
        transport=httpx.ASGITransport(app=UPSTREAM),
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8080") as client:
        yield client
    await app.client.aclose()


async def test_a_request_reaches_its_service_with_forwarding_headers(
    edge: httpx.AsyncClient,
) -> None:
    response = await edge.post("/api/users/signup?x=1", json={"email": "a@b.co"})
    assert response.status_code == 201
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/api/users/signup"
    assert seen["query"] == "x=1"
    assert json.loads(seen["body"]) == {"email": "a@b.co"}
    headers = seen["headers"]
    assert headers["host"] == "localhost:8080"  # the origin the user sees, as the ingress does
    assert headers["x-forwarded-for"] == "203.0.113.9"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "localhost:8080"
    assert headers["x-forwarded-port"] == "8080"
    assert headers["x-real-ip"] == "203.0.113.9"
    assert len(headers["x-request-id"]) == 32
    # Both cookies survive the trip back (one header each).
    assert response.headers.get_list("set-cookie")[0].startswith("session=abc")
    assert response.headers.get_list("set-cookie")[1].startswith("other=def")


async def test_header_values_are_trimmed_before_forwarding(edge: httpx.AsyncClient) -> None:
    """A trailing blank is legal from a client; httpx refuses to send it on (a 502 before)."""
    response = await edge.get("/api/users/x", headers={"User-Agent": "Mozilla ", "X-Note": "a\t"})
    assert response.status_code == 201
    headers = response.json()["headers"]
    assert headers["user-agent"] == "Mozilla"
    assert headers["x-note"] == "a"


async def test_a_request_id_from_the_caller_is_kept(edge: httpx.AsyncClient) -> None:
    response = await edge.get("/api/users/currentuser", headers={"X-Request-Id": "trace-me"})
    assert response.json()["headers"]["x-request-id"] == "trace-me"


async def test_forwarding_headers_from_the_client_are_replaced_not_trusted(
    edge: httpx.AsyncClient,
) -> None:
    # A client claiming another address, scheme, host or port (as a spoofer would).
    response = await edge.get(
        "/api/users/currentuser",
        headers=[
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "198.51.100.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Port", "443"),
            ("X-Forwarded-Prefix", "/admin"),
            ("Forwarded", "for=198.51.100.3;proto=https"),
            ("X-Real-IP", "198.51.100.4"),
        ],
    )
    raw = response.json()["raw_headers"]
    forwarding = sorted(
        (k, v) for k, v in raw if k.startswith("x-forwarded-") or k in ("forwarded", "x-real-ip")
    )
    # Exactly one of each, all from what the edge saw itself.
    assert forwarding == [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-host", "localhost:8080"),
        ("x-forwarded-port", "8080"),
        ("x-forwarded-proto", "http"),
        ("x-real-ip", "203.0.113.9"),
    ]


async def test_headers_named_in_connection_are_not_forwarded(edge: httpx.AsyncClient) -> None:
    response = await edge.get(
        "/api/users/currentuser",
        headers={
            "Connection": "keep-alive, X-Secret-Hop , x-other-hop",
            "X-Secret-Hop": "1",
            "X-Other-Hop": "2",
            "X-Kept": "3",
            "Keep-Alive": "timeout=5",
        },
    )
    raw = response.json()["raw_headers"]
    names = {k for k, _ in raw}
    assert "x-kept" in names
    assert not names & {"keep-alive", "x-secret-hop", "x-other-hop"}
    # The edge's own connection to the service may say keep-alive; the client's never passes.
    assert [v for k, v in raw if k == "connection"] in ([], ["keep-alive"])


async def test_a_client_leaving_mid_body_sends_nothing_upstream() -> None:
    forwarded: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        forwarded.append(request)
        return httpx.Response(200)

    app = Edge(
        RoutingTable.load(),
        {"tickets": "http://tickets.internal"},
        transport=httpx.MockTransport(upstream),
    )
    # What uvicorn hands the app when the connection drops after the first part of the body.
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"title": "x", "price": 10', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/tickets",
        "raw_path": b"/api/tickets",
        "query_string": b"",
        "scheme": "http",
        "headers": [(b"host", b"localhost:8080"), (b"content-type", b"application/json")],
        "client": ("203.0.113.9", 5000),
        "server": ("127.0.0.1", 8080),
    }
    await app(scope, receive, send)
    await app.client.aclose()
    assert forwarded == []
    assert sent == []  # nobody left to answer


async def test_a_service_that_is_down_gives_503_with_retry_after() -> None:
    # "tickets" points at a port nobody listens on (a service restarting after a crash).
    app = Edge(RoutingTable.load(), {"tickets": f"http://127.0.0.1:{free_port()}"})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        response = await client.get("/api/tickets")
    await app.client.aclose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "errors": [{"message": "The tickets service is unavailable; try again shortly"}]
    }


async def test_without_a_client_the_edge_lists_the_api_itself(edge: httpx.AsyncClient) -> None:
    home = await edge.get("/")
    assert home.status_code == 200
    assert home.headers["content-type"].startswith("text/html")
    assert "/api/users/signup" in home.text and "/api/payments" in home.text

    missing = await edge.get("/tickets/new")
    assert missing.status_code == 404
    assert missing.json() == {"errors": [{"message": "Not found"}]}
