"""The outbound client keeps no cookie between requests, whatever the server sets."""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse

from ticketing_common.http import outbound_client


async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    request = Request(scope, receive)
    response = JSONResponse({"cookie": request.headers.get("cookie")})
    if request.url.path == "/set":
        response.set_cookie("session", "alice", httponly=True)
    await response(scope, receive, send)


async def test_a_set_cookie_is_passed_on_but_never_remembered() -> None:
    async with outbound_client(
        timeout=5, base_url="http://upstream", transport=httpx.ASGITransport(app=app)
    ) as client:
        first = await client.get("/set")
        assert first.headers["set-cookie"].startswith("session=alice")
        assert len(client.cookies.jar) == 0
        second = await client.get("/echo")
        assert second.json() == {"cookie": None}
        # A cookie the caller forwards explicitly is sent, on that request only.
        forwarded = await client.get("/echo", headers={"cookie": "session=bob"})
        assert forwarded.json() == {"cookie": "session=bob"}
        assert (await client.get("/echo")).json() == {"cookie": None}
