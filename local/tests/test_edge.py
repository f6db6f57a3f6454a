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
    assert len(headers["x-request-id"]) == 32
    # Both cookies survive the trip back (one header each).
    assert response.headers.get_list("set-cookie")[0].startswith("session=abc")
    assert response.headers.get_list("set-cookie")[1].startswith("other=def")


async def test_a_request_id_from_the_caller_is_kept(edge: httpx.AsyncClient) -> None:
    response = await edge.get("/api/users/currentuser", headers={"X-Request-Id": "trace-me"})
    assert response.json()["headers"]["x-request-id"] == "trace-me"


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
