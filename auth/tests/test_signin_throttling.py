"""Sign-in throttling by client: it slows a guesser down without locking anyone out.

Each test is an attack: many guesses at once (real concurrency against one service and its
database), one guess per email across many emails (spraying), a forged X-Forwarded-For.
"""

from __future__ import annotations

import asyncio

import httpx

from auth.settings import AuthSettings
from ticketing_common.testing import TestDatabase

from .helpers import ClientAt

SIGNUP = "/api/users/signup"
SIGNIN = "/api/users/signin"
PASSWORD = "correct horse"
ATTACKER = "203.0.113.9"
OWNER = "198.51.100.7"


async def sign_up(client: httpx.AsyncClient, email: str) -> None:
    response = await client.post(SIGNUP, json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    client.cookies.clear()


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, **headers: str
) -> httpx.Response:
    return await client.post(SIGNIN, json={"email": email, "password": password}, headers=headers)


def assert_throttled(response: httpx.Response, settings: AuthSettings) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == {
        "errors": [{"message": "Too many failed sign-in attempts; try again later"}]
    }
    assert 1 <= int(response.headers["retry-after"]) <= settings.signin_failure_window_seconds
    assert "set-cookie" not in response.headers


async def test_an_attacker_hammering_an_account_does_not_lock_out_its_owner(
    client_at: ClientAt, settings: AuthSettings
) -> None:
    attacker, owner = client_at(ATTACKER), client_at(OWNER)
    await sign_up(owner, "ada@example.com")

    guesses = [sign_in(attacker, "ada@example.com", f"guess-{i:04d}") for i in range(30)]
    *answers, owners = await asyncio.gather(*guesses, sign_in(owner, "ada@example.com"))

    assert owners.status_code == 200, owners.text
    assert "session=" in owners.headers["set-cookie"]
    statuses = [a.status_code for a in answers]
    assert statuses.count(400) == settings.signin_max_failures
    assert statuses.count(429) == 30 - settings.signin_max_failures
    # The attacker stays locked out even with the right password; the owner is not.
    assert_throttled(await sign_in(attacker, "ada@example.com"), settings)
    assert (await sign_in(owner, "ada@example.com")).status_code == 200


async def test_one_guess_per_email_across_many_emails_is_throttled(
    client_at: ClientAt, settings: AuthSettings, db: TestDatabase
) -> None:
    sprayer, someone_else = client_at(ATTACKER), client_at(OWNER)
    await sign_up(someone_else, "victim@example.com")
    emails = [f"user{i}@example.com" for i in range(30)]

    answers = await asyncio.gather(*(sign_in(sprayer, email, "Summer2026!") for email in emails))

    statuses = [a.status_code for a in answers]
    assert statuses.count(400) == settings.signin_max_failures_per_client
    assert statuses.count(429) == 30 - settings.signin_max_failures_per_client
    # Guessed right now, the sprayer still learns nothing; from elsewhere it works.
    assert_throttled(await sign_in(sprayer, "victim@example.com"), settings)
    assert (await sign_in(someone_else, "victim@example.com")).status_code == 200
    rows = await db.fetch("SELECT client, count(*) AS n FROM signin_failures GROUP BY 1")
    assert [(r["client"], r["n"]) for r in rows] == [
        (ATTACKER, settings.signin_max_failures_per_client)
    ]


async def test_a_forged_x_forwarded_for_does_not_make_a_new_client(
    client_at: ClientAt, settings: AuthSettings
) -> None:
    sprayer = client_at(ATTACKER)
    answers = await asyncio.gather(
        *(
            sign_in(sprayer, f"user{i}@example.com", "guess", **{"X-Forwarded-For": f"10.0.0.{i}"})
            for i in range(20)
        )
    )
    statuses = [a.status_code for a in answers]
    assert statuses.count(400) == settings.signin_max_failures_per_client
    assert statuses.count(429) == 20 - settings.signin_max_failures_per_client


async def test_signing_in_to_ones_own_account_does_not_reset_spraying(
    client_at: ClientAt, settings: AuthSettings
) -> None:
    sprayer = client_at(ATTACKER)
    await sign_up(sprayer, "me@example.com")
    for i in range(settings.signin_max_failures_per_client - 1):
        assert (await sign_in(sprayer, f"user{i}@example.com", "guess")).status_code == 400
    assert (await sign_in(sprayer, "me@example.com")).status_code == 200
    assert (await sign_in(sprayer, "last@example.com", "guess")).status_code == 400
    assert_throttled(await sign_in(sprayer, "me@example.com"), settings)


async def test_retry_after_says_when_the_oldest_failure_leaves_the_window(
    client_at: ClientAt, settings: AuthSettings, db: TestDatabase
) -> None:
    client = client_at(ATTACKER)
    await db.fetch(
        "INSERT INTO signin_failures (email, client, failed_at) "
        "SELECT 'ada@example.com', $1, now() - make_interval(secs => $2) "
        "FROM generate_series(1, $3)",
        ATTACKER,
        settings.signin_failure_window_seconds - 100,
        settings.signin_max_failures,
    )
    response = await sign_in(client, "ada@example.com")
    assert response.status_code == 429
    assert 95 <= int(response.headers["retry-after"]) <= 101
