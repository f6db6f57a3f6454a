from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from auth.service import Passwords
from auth.settings import AuthSettings
from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.testing import ServiceHarness, TestDatabase
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import NatsServer

SIGNUP = "/api/users/signup"
SIGNIN = "/api/users/signin"
PASSWORD = "correct horse"


async def signup(client: httpx.AsyncClient, email: str = "ada@example.com") -> httpx.Response:
    return await client.post(SIGNUP, json={"email": email, "password": PASSWORD})


async def test_signup_creates_user_and_signs_in(client: httpx.AsyncClient) -> None:
    response = await signup(client, "  Ada@Example.COM ")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "email"} and body["email"] == "ada@example.com"
    me = await client.get("/api/users/currentuser")
    assert me.json() == {"currentUser": body}


async def test_session_cookie_flags(client: httpx.AsyncClient) -> None:
    response = await signup(client)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # test settings serve plain HTTP


async def test_cookie_is_secure_when_configured(settings: AuthSettings) -> None:
    from auth.app import create_app
    from ticketing_common.testing import ServiceHarness

    secure = settings.model_copy(update={"cookie_secure": True})
    async with ServiceHarness(create_app(secure)).client() as client:
        response = await signup(client, "secure@example.com")
    assert "Secure" in response.headers["set-cookie"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": "a@example.com", "password": "short"}, "password"),
        ({"email": "a@example.com", "password": "x" * 129}, "password"),
        ({"email": "a@example.com"}, "password"),
        ({"password": PASSWORD}, "email"),
        ({"email": 12, "password": PASSWORD}, "email"),
    ],
)
async def test_signup_rejects_invalid_input(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post(SIGNUP, json=body)
    assert response.status_code == 400
    assert field in {e.get("field") for e in response.json()["errors"]}


async def test_signup_rejects_email_in_use(client: httpx.AsyncClient) -> None:
    assert (await signup(client)).status_code == 201
    response = await signup(client, "ADA@example.com")
    assert response.status_code == 400
    assert response.json() == {"errors": [{"message": "Email in use", "field": "email"}]}


async def test_concurrent_signups_with_one_email_exactly_one_wins(
    client: httpx.AsyncClient, db: TestDatabase
) -> None:
    responses = await asyncio.gather(*(signup(client, "race@example.com") for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [400] * 19
    assert all(
        r.json()["errors"][0]["message"] == "Email in use"
        for r in responses
        if r.status_code == 400
    )
    rows = await db.fetch("SELECT count(*) AS n FROM users WHERE email = 'race@example.com'")
    assert rows[0]["n"] == 1


async def test_password_is_stored_as_argon2id(client: httpx.AsyncClient, db: TestDatabase) -> None:
    await signup(client)
    (row,) = await db.fetch("SELECT password_hash FROM users")
    assert row["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in row["password_hash"]


async def test_signin_with_correct_password(client: httpx.AsyncClient) -> None:
    user = (await signup(client)).json()
    client.cookies.clear()
    response = await client.post(SIGNIN, json={"email": "ADA@example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json() == user
    assert "session=" in response.headers["set-cookie"]
    assert (await client.get("/api/users/currentuser")).json()["currentUser"] == user


async def test_unknown_email_and_wrong_password_get_the_same_answer(
    client: httpx.AsyncClient,
) -> None:
    await signup(client)
    client.cookies.clear()
    wrong = await client.post(SIGNIN, json={"email": "ada@example.com", "password": "wrong pass"})
    unknown = await client.post(SIGNIN, json={"email": "bob@example.com", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.json() == unknown.json() == {"errors": [{"message": "Invalid credentials"}]}
    assert "set-cookie" not in wrong.headers and "set-cookie" not in unknown.headers


async def test_repeated_failures_give_429_then_success_is_blocked_too(
    client: httpx.AsyncClient, settings: AuthSettings
) -> None:
    await signup(client)
    for _ in range(settings.signin_max_failures):
        response = await client.post(
            SIGNIN, json={"email": "ada@example.com", "password": "nopenope"}
        )
        assert response.status_code == 400
    response = await client.post(SIGNIN, json={"email": "ada@example.com", "password": PASSWORD})
    assert response.status_code == 429
    assert response.json()["errors"][0]["message"].startswith("Too many failed sign-in attempts")
    assert int(response.headers["retry-after"]) > 0
    # Other accounts are not affected.
    await signup(client, "bob@example.com")
    ok = await client.post(SIGNIN, json={"email": "bob@example.com", "password": PASSWORD})
    assert ok.status_code == 200


async def test_successful_signin_resets_the_failure_count(
    client: httpx.AsyncClient, settings: AuthSettings
) -> None:
    await signup(client)
    for _ in range(settings.signin_max_failures - 1):
        await client.post(SIGNIN, json={"email": "ada@example.com", "password": "nopenope"})
    assert (
        await client.post(SIGNIN, json={"email": "ada@example.com", "password": PASSWORD})
    ).status_code == 200
    for _ in range(settings.signin_max_failures - 1):
        await client.post(SIGNIN, json={"email": "ada@example.com", "password": "nopenope"})
    assert (
        await client.post(SIGNIN, json={"email": "ada@example.com", "password": PASSWORD})
    ).status_code == 200


async def test_signin_rejects_malformed_body(client: httpx.AsyncClient) -> None:
    response = await client.post(SIGNIN, json={"email": "nope"})
    assert response.status_code == 400
    assert {e.get("field") for e in response.json()["errors"]} == {"email", "password"}


async def test_signout_clears_the_cookie(client: httpx.AsyncClient) -> None:
    await signup(client)
    response = await client.post("/api/users/signout")
    assert response.status_code == 200 and response.json() == {}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith('session=""') and "Max-Age=0" in cookie
    assert (await client.get("/api/users/currentuser")).json() == {"currentUser": None}


async def test_currentuser_is_null_for_bad_cookies(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/users/currentuser")).json() == {"currentUser": None}
    client.cookies.set("session", "tampered.token.value")
    assert (await client.get("/api/users/currentuser")).json() == {"currentUser": None}


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {
        "/api/users/signup",
        "/api/users/signin",
        "/api/users/signout",
        "/api/users/currentuser",
    } <= set(paths)
    assert "400" in paths["/api/users/signup"]["post"]["responses"]


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/api/users/currentuser", headers={"X-Request-Id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = await client.get("/api/users/currentuser")
    assert len(made.headers["x-request-id"]) == 32


async def test_readiness_follows_nats(client: httpx.AsyncClient, nats_server: NatsServer) -> None:
    nats_server.stop()
    try:

        async def not_ready() -> bool:
            response = await client.get("/readyz")
            return response.status_code == 503 and response.json() == {
                "errors": [{"message": "NATS unreachable"}]
            }

        await eventually(not_ready, timeout=10)
    finally:
        nats_server.start()

    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(ready, timeout=15)


async def test_parallel_wrong_passwords_cannot_bypass_the_throttle(
    client: httpx.AsyncClient, settings: AuthSettings, db: TestDatabase
) -> None:
    await signup(client)
    client.cookies.clear()
    responses = await asyncio.gather(
        *(
            client.post(SIGNIN, json={"email": "ada@example.com", "password": f"guess-{i:04d}"})
            for i in range(30)
        )
    )
    statuses = [r.status_code for r in responses]
    # Attempts for one email are serialised: only `signin_max_failures` guesses are checked.
    assert statuses.count(400) == settings.signin_max_failures
    assert statuses.count(429) == 30 - settings.signin_max_failures
    assert all(
        r.json() == {"errors": [{"message": "Invalid credentials"}]}
        for r in responses
        if r.status_code == 400
    )
    rows = await db.fetch(
        "SELECT count(*) AS n FROM signin_failures WHERE email = 'ada@example.com'"
    )
    assert rows[0]["n"] == settings.signin_max_failures


async def test_failures_older_than_the_window_are_deleted(
    client: httpx.AsyncClient, settings: AuthSettings, db: TestDatabase
) -> None:
    await signup(client)
    client.cookies.clear()
    await db.fetch(
        # This client's, and those of a client that never came back.
        "INSERT INTO signin_failures (email, client, failed_at) SELECT 'ada@example.com', "
        "client, now() - make_interval(secs => $1) FROM generate_series(1, 10), "
        "unnest(ARRAY['127.0.0.1', '198.51.100.99']) AS client",
        settings.signin_failure_window_seconds + 60,
    )
    response = await client.post(SIGNIN, json={"email": "ada@example.com", "password": "nopenope"})
    assert response.status_code == 400  # stale failures do not throttle
    rows = await db.fetch(
        "SELECT failed_at > now() - interval '1 minute' AS recent FROM signin_failures"
    )
    assert [r["recent"] for r in rows] == [True]


class _HashInHand(Passwords):
    """The real hasher, held at the start of each hash and check until released: what the
    database holds meanwhile can be looked at."""

    def __init__(self, settings: AuthSettings) -> None:
        super().__init__(settings)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def _held(self) -> None:
        self.started.set()
        await self.release.wait()

    async def hash(self, password: str) -> str:
        await self._held()
        return await super().hash(password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        await self._held()
        return await super().verify(password, password_hash)


@pytest.mark.parametrize("path", [SIGNUP, SIGNIN])
async def test_no_database_transaction_is_held_through_a_password_hash(
    harness: ServiceHarness, settings: AuthSettings, db: TestDatabase, path: str
) -> None:
    """A hash takes tens of milliseconds by design: held open through it, a transaction would
    keep one of the pool's connections from everyone else that long, for every sign-up."""
    passwords = _HashInHand(settings)
    async with harness.client() as client:
        if path == SIGNIN:
            passwords.release.set()
            harness.app.state.passwords = passwords
            assert (await signup(client)).status_code == 201
            client.cookies.clear()
            passwords.started.clear()
            passwords.release.clear()
        harness.app.state.passwords = passwords
        answer = asyncio.create_task(
            client.post(path, json={"email": "ada@example.com", "password": PASSWORD})
        )
        await asyncio.wait_for(passwords.started.wait(), 10)
        watcher = await asyncpg.connect(with_driver(db.url, driver=PLAIN))
        try:
            # A transaction of this request, its last statement about users, waiting on us.
            held = await watcher.fetch(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%' AND query LIKE '%users%'"
            )
        finally:
            await watcher.close()
        passwords.release.set()
        assert (await answer).status_code in {200, 201}
    assert held == []
