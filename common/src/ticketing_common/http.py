"""Outbound HTTP: the one way the project builds a client that calls another server.

Such a client serves many people in turn (the edge, the web client calling the APIs), so it must
never remember a cookie: a jar would hand one person's session to the next request. Cookies a
caller needs are sent as an explicit ``Cookie`` header on the request that needs them.
"""

from __future__ import annotations

from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from urllib.request import Request

import httpx


class _RefuseAllCookies(DefaultCookiePolicy):
    """A cookie policy under which a jar stores nothing and sends nothing."""

    def set_ok(self, cookie: Cookie, request: Request) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Request) -> bool:
        return False


def cookie_jar_keeping_nothing() -> CookieJar:
    """The jar every outbound client has: a client built by a library (a payment provider's
    SDK, say) is given one too."""
    return CookieJar(policy=_RefuseAllCookies())


def outbound_client(
    *,
    timeout: httpx.Timeout | float,
    base_url: str = "",
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that keeps no cookies and ignores proxy environment variables.

    ``trust_env=False``: a proxy configured for the outside world must not catch requests to
    services on the same network.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        headers=headers,
        transport=transport,
        trust_env=False,
        cookies=cookie_jar_keeping_nothing(),
    )
