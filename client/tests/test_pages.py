"""The client on its own (its services unreachable): headers, static files, forms refused
before any call, and the friendly pages. The pages with the services are driven in a real
browser by tests/system/test_web_client.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

from client.app import create_app
from client.settings import ClientSettings
from client.templating import STATIC_DIGESTS
from ticketing_common.embedded import free_port
from ticketing_common.testing.helpers import TEST_JWT_KEY

Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def client() -> Client:
    """The client app, its lifespan running, with every service at an address nobody serves."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        nowhere = f"http://127.0.0.1:{free_port()}"
        urls = {f"{name}_url": nowhere for name in ("auth", "tickets", "orders", "payments")}
        settings = ClientSettings(jwt_key=TEST_JWT_KEY, **(urls | overrides))
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://client.test"
            ) as http:
                yield http

    return start


def hidden(page: httpx.Response, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page.text)
    assert found, f"no {name} in the page"
    return found.group(1)


async def test_a_service_down_gives_the_try_again_page(client: Client) -> None:
    async with client() as http:
        page = await http.get("/")
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert "Something is down" in page.text
    assert "Traceback" not in page.text and "ConnectError" not in page.text
    assert page.headers["retry-after"] == "5"


async def test_unknown_pages_and_malformed_ids_are_the_not_found_page(client: Client) -> None:
    async with client() as http:
        for path in ("/no/such/page", "/tickets/not-an-id", "/tickets/123"):
            page = await http.get(path)
            assert page.status_code == 404, path
            assert "Page not found" in page.text


async def test_every_page_carries_the_security_headers(client: Client) -> None:
    async with client() as http:
        page = await http.get("/auth/signin")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'nonce="{nonce.group(1)}"' in page.text
    assert "frame-ancestors 'none'" in csp and "stripe" not in csp
    assert "'unsafe-inline'" not in csp
    assert re.search(r"<[^>]+\son\w+=", page.text) is None, "an inline event handler"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert "strict-transport-security" not in page.headers
    assert page.headers["x-request-id"]


async def test_a_fresh_nonce_each_time(client: Client) -> None:
    async with client() as http:
        first, second = await http.get("/auth/signin"), await http.get("/auth/signin")
    assert first.headers["content-security-policy"] != second.headers["content-security-policy"]


async def test_hsts_with_secure_cookies_and_stripe_only_with_its_key(client: Client) -> None:
    async with client(cookie_secure=True, stripe_publishable_key="pk_test_123") as http:
        page = await http.get("/auth/signin")
    assert page.headers["strict-transport-security"].startswith("max-age=")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self' 'nonce-" in csp and "https://js.stripe.com" in csp
    assert "Secure" in page.headers["set-cookie"]


async def test_static_files_are_addressed_by_content_and_cached_for_long(client: Client) -> None:
    async with client() as http:
        digest = STATIC_DIGESTS["style.css"]
        css = await http.get(f"/static/{digest}/style.css")
        stale = await http.get("/static/0000000000000000/style.css")
        outside = await http.get(f"/static/{digest}/..%2Fapp.py")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert stale.status_code == 404 and outside.status_code == 404


async def test_a_form_without_a_valid_token_is_refused_before_any_call(client: Client) -> None:
    async with client() as http:
        form = await http.get("/auth/signin")
        token = hidden(form, "csrf_token")
        credentials = {"email": "a@example.com", "password": "whatever1"}
        missing = await http.post("/auth/signin", data=credentials)
        forged = await http.post("/auth/signin", data=credentials | {"csrf_token": "f" * 64})
        elsewhere = await http.post(
            "/auth/signin",
            data=credentials | {"csrf_token": token},
            headers={"Origin": "https://evil.example"},
        )
        # The right token from the right origin gets through to auth (down here: 503).
        accepted = await http.post(
            "/auth/signin",
            data=credentials | {"csrf_token": token},
            headers={"Origin": "http://client.test"},
        )
        http.cookies.clear()  # another browser, with the token copied from this one
        stolen = await http.post("/auth/signin", data=credentials | {"csrf_token": token})
    for refused in (missing, forged, elsewhere, stolen):
        assert refused.status_code == 403
        assert "This form has expired" in refused.text
    assert accepted.status_code == 503


async def test_the_token_is_bound_to_the_session(client: Client) -> None:
    async with client() as http:
        signed_out = hidden(await http.get("/auth/signin"), "csrf_token")
        http.cookies.set("session", "a-session-token", domain="client.test")
        signed_in = hidden(await http.get("/auth/signin"), "csrf_token")
    assert signed_out != signed_in


async def test_the_language_switch_is_remembered_and_never_sends_you_elsewhere(
    client: Client,
) -> None:
    async with client() as http:
        dutch = await http.get("/auth/signin", headers={"Accept-Language": "nl-NL,nl;q=0.9"})
        switched = await http.get("/language/en", params={"next": "/auth/signup"})
        english = await http.get("/auth/signin", headers={"Accept-Language": "nl"})
        away = await http.get("/language/nl", params={"next": "//evil.example/x"})
        unknown = await http.get("/language/xx")
    assert '<html lang="nl">' in dutch.text and "Inloggen" in dutch.text
    assert switched.status_code == 303 and switched.headers["location"] == "/auth/signup"
    assert '<html lang="en">' in english.text
    assert away.headers["location"] == "/"
    assert unknown.status_code == 404


async def test_signed_in_pages_send_a_stranger_to_sign_in(client: Client) -> None:
    async with client() as http:
        for path in ("/tickets/new", "/tickets/mine", "/orders"):
            page = await http.get(path)
            assert page.status_code == 303
            assert page.headers["location"] == f"/auth/signin?next={path.replace('/', '%2F')}"


async def test_health_and_readiness(client: Client) -> None:
    async with client() as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
