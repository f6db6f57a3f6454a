"""CSRF protection: a token in every form, bound to the browser and its session, plus an Origin
check.

The browser holds a random ``csrf`` cookie (HttpOnly, SameSite=Lax). A form's token is an HMAC,
under ``JWT_KEY``, of that cookie and the session cookie: another site can neither read it nor
compute it, and signing in or out changes it (a token taken before cannot be replayed after).
A POST whose ``Origin`` names another site is refused even with a valid token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request

from client.settings import ClientSettings
from ticketing_common.auth import SESSION_COOKIE

CSRF_COOKIE = "csrf"
CSRF_FIELD = "csrf_token"


class CsrfRefusedError(Exception):
    """A POST without a valid token, or from another origin (answered with a 403 page)."""


def browser_secret(request: Request) -> str:
    """This browser's ``csrf`` cookie, or a new one the response will set."""
    secret = request.cookies.get(CSRF_COOKIE)
    if not secret or len(secret) > 100:
        secret = getattr(request.state, "new_csrf_secret", None) or secrets.token_urlsafe(32)
        request.state.new_csrf_secret = secret
    return secret


def csrf_token(request: Request) -> str:
    settings: ClientSettings = request.app.state.settings
    session = request.cookies.get(SESSION_COOKIE, "")
    message = f"{browser_secret(request)}|{session}".encode()
    key = settings.jwt_key.get_secret_value().encode()
    return hmac.new(key, b"csrf|" + message, hashlib.sha256).hexdigest()


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        # Browsers send Origin with every form POST; a client that sends none is no browser
        # being tricked, and the token still has to match.
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


async def check_csrf(request: Request) -> None:
    """A dependency of every POST page."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if (
        not _same_origin(request)
        or CSRF_COOKIE not in request.cookies
        or not isinstance(sent, str)
        or not hmac.compare_digest(sent, csrf_token(request))
    ):
        raise CsrfRefusedError()


CsrfChecked = Annotated[None, Depends(check_csrf)]
