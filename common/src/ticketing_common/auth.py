"""JWT-in-a-cookie sessions, verified by every service with the shared ``JWT_KEY``.

A missing, expired, tampered or wrongly-signed token all mean the same: not signed in.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import jwt
from fastapi import Depends, Request, Response
from pydantic import BaseModel, ConfigDict

from ticketing_common.clock import utcnow
from ticketing_common.errors import NotAuthorizedError
from ticketing_common.settings import WebSettings, app_settings

SESSION_COOKIE = "session"
JWT_ALGORITHM = "HS256"
CLOCK_SKEW_SECONDS = 30


class UserClaims(BaseModel):
    """The signed-in user, as the session token states it."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    email: str


def create_session_token(user: UserClaims, settings: WebSettings) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user.id),
        "email": user.email,
        "iat": now,
        "exp": now + timedelta(seconds=settings.session_ttl_seconds),
    }
    return jwt.encode(claims, settings.jwt_key.get_secret_value(), algorithm=JWT_ALGORITHM)


def decode_session_token(token: str, settings: WebSettings) -> UserClaims | None:
    try:
        user, expires = _verified(token, settings.jwt_key.get_secret_value())
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    # Checked on every use, as jwt.decode does it: a token verified earlier expires all the same.
    if utcnow().timestamp() >= expires + CLOCK_SKEW_SECONDS:
        return None
    return user


# A session sends one token with each of its requests: its signature is checked once, not on
# every request (a check costs more than the rest of a request's session handling). Only a
# valid token is kept (a refused one raises, and lru_cache keeps no exception).
@functools.lru_cache(maxsize=4096)
def _verified(token: str, key: str) -> tuple[UserClaims, float]:
    """The token's user and expiry (a timestamp), its signature and claims checked but its
    expiry left to the caller; raises if it is not a valid session token."""
    claims = jwt.decode(
        token,
        key,
        algorithms=[JWT_ALGORITHM],
        options={"require": ["sub", "email", "iat", "exp"], "verify_exp": False},
        # Hosts' clocks differ a little: a token issued "in the future" by a few seconds
        # (or just expired) must not flip a fresh session to signed out.
        leeway=CLOCK_SKEW_SECONDS,
    )
    return UserClaims(id=uuid.UUID(claims["sub"]), email=claims["email"]), float(claims["exp"])


def set_session_cookie(response: Response, token: str, settings: WebSettings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl_seconds,
        httponly=True,
        secure=settings.cookie_secure,
        samesite="lax",
        path="/",
    )


def clear_session_cookie(response: Response, settings: WebSettings) -> None:
    response.delete_cookie(
        SESSION_COOKIE, httponly=True, secure=settings.cookie_secure, samesite="lax", path="/"
    )


# async: a plain ``def`` dependency is run in a worker thread (see settings_dependency).
async def optional_user(request: Request) -> UserClaims | None:
    token = request.cookies.get(SESSION_COOKIE)
    return decode_session_token(token, app_settings(request, WebSettings)) if token else None


# Calls optional_user rather than depending on it: each dependency FastAPI resolves costs a
# request more than the call does.
async def required_user(request: Request) -> UserClaims:
    user = await optional_user(request)
    if user is None:
        raise NotAuthorizedError()
    return user


OptionalUser = Annotated[UserClaims | None, Depends(optional_user)]
CurrentUser = Annotated[UserClaims, Depends(required_user)]
