from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from pydantic import ValidationError

from ticketing_common import auth
from ticketing_common.auth import (
    CLOCK_SKEW_SECONDS,
    UserClaims,
    create_session_token,
    decode_session_token,
)
from ticketing_common.settings import ServiceSettings

KEY = "k" * 40


def settings(**overrides: object) -> ServiceSettings:
    return ServiceSettings(**({"jwt_key": KEY} | overrides))  # type: ignore[arg-type]


def test_token_round_trip() -> None:
    user = UserClaims(id=uuid.uuid4(), email="a@example.com")
    token = create_session_token(user, settings())
    assert decode_session_token(token, settings()) == user
    claims = jwt.decode(token, KEY, algorithms=["HS256"])
    assert set(claims) == {"sub", "email", "iat", "exp"}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            lambda: create_session_token(
                UserClaims(id=uuid.uuid4(), email="a@b.c"), settings(jwt_key="x" * 40)
            ),
            id="wrong-key",
        ),
        pytest.param(
            lambda: jwt.encode(
                {
                    "sub": str(uuid.uuid4()),
                    "email": "a@b.c",
                    "iat": datetime.now(UTC) - timedelta(days=2),
                    "exp": datetime.now(UTC) - timedelta(days=1),
                },
                KEY,
                algorithm="HS256",
            ),
            id="expired",
        ),
        pytest.param(
            lambda: (
                create_session_token(UserClaims(id=uuid.uuid4(), email="a@b.c"), settings())[:-3]
                + "abc"
            ),
            id="tampered",
        ),
        pytest.param(
            lambda: jwt.encode(
                {"sub": str(uuid.uuid4()), "email": "a@b.c"}, KEY, algorithm="HS256"
            ),
            id="no-expiry",
        ),
        pytest.param(
            lambda: jwt.encode(
                {
                    "sub": "x",
                    "email": "a@b.c",
                    "iat": datetime.now(UTC),
                    "exp": datetime.now(UTC) + timedelta(hours=1),
                },
                KEY,
                algorithm="HS256",
            ),
            id="bad-sub",
        ),
        pytest.param(lambda: "garbage", id="garbage"),
    ],
)
def test_bad_tokens_mean_not_signed_in(token: object) -> None:
    assert decode_session_token(token(), settings()) is None  # type: ignore[operator]


@pytest.mark.parametrize("key", [None, "secret", "short-key", "changeme"])
def test_production_refuses_missing_or_weak_jwt_key(key: str | None) -> None:
    values: dict[str, object] = {"environment": "production"}
    if key is not None:
        values["jwt_key"] = key
    with pytest.raises(ValidationError, match=r"(?i)jwt_key"):
        ServiceSettings(**values)  # type: ignore[arg-type]


def test_a_key_is_required_in_every_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_KEY", raising=False)
    with pytest.raises(ValidationError, match="jwt_key"):
        ServiceSettings(environment="development")


def test_token_issued_a_few_seconds_in_the_future_is_accepted() -> None:
    """Another host's clock runs a little ahead of ours."""
    now = datetime.now(UTC)
    token = jwt.encode(
        {
            "sub": str(uuid.uuid4()),
            "email": "a@b.c",
            "iat": now + timedelta(seconds=5),
            "exp": now + timedelta(hours=1),
        },
        KEY,
        algorithm="HS256",
    )
    assert decode_session_token(token, settings()) is not None


def test_a_token_accepted_before_is_refused_once_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its signature is checked once and remembered; its expiry is checked on every use."""
    user = UserClaims(id=uuid.uuid4(), email="a@b.c")
    token = create_session_token(user, settings(session_ttl_seconds=60))
    assert decode_session_token(token, settings()) == user
    later = datetime.now(UTC) + timedelta(seconds=60 + CLOCK_SKEW_SECONDS + 1)
    monkeypatch.setattr(auth, "utcnow", lambda: later)
    assert decode_session_token(token, settings()) is None
    # Still refused with another key, though the same token was accepted with ours.
    monkeypatch.undo()
    assert decode_session_token(token, settings(jwt_key="x" * 40)) is None
    assert decode_session_token(token, settings()) == user


def test_production_accepts_a_strong_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_KEY", "0f" * 32)
    monkeypatch.setenv("NATS_USER", "orders")
    monkeypatch.setenv("NATS_PASSWORD", "a1" * 16)
    settings = ServiceSettings()
    assert settings.environment == "production"
    assert settings.nats_user == "orders"
    assert "a1a1" not in repr(settings)


@pytest.mark.parametrize(
    "bus", [{}, {"NATS_USER": "orders"}, {"NATS_PASSWORD": "a1" * 16}], ids=["none", "user", "pw"]
)
def test_production_refuses_to_start_without_bus_credentials(
    monkeypatch: pytest.MonkeyPatch, bus: dict[str, str]
) -> None:
    for name in ("NATS_USER", "NATS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"ENVIRONMENT": "production", "JWT_KEY": "0f" * 32, **bus}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match="NATS_USER and NATS_PASSWORD"):
        ServiceSettings()
