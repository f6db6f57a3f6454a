"""The edge as an attacker meets it: the platform as ``make up`` runs it, over HTTP only.

Paths are sent exactly as written (``http.client`` does not normalise them; a raw socket
where even that is too polite), so ``..``, ``%2e`` and friends reach the edge as a hostile
client would send them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from .local_platform import LocalPlatform, User

pytestmark = pytest.mark.timeout(300)

NOT_FOUND = {"errors": [{"message": "Not found"}]}
NOT_NORMAL = {
    "errors": [
        {"message": "The path must be in normal form (no dot segments or encoded separators)"}
    ]
}


def exchange(
    platform: LocalPlatform,
    method: str,
    path: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request with ``path`` sent byte for byte as given; (status, headers, body). The body's
    Content-Length is sent unless ``headers`` declare one."""
    conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers or []:
            conn.putheader(name, value)
        declared = any(name.lower() == "content-length" for name, _ in headers or [])
        if body is not None and not declared:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def send(
    platform: LocalPlatform,
    method: str,
    path: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> tuple[int, bytes]:
    """(status, body) of :func:`exchange`."""
    status, _, answer = exchange(platform, method, path, headers, body)
    return status, answer


def status_of_oversized(platform: LocalPlatform, request: bytes) -> int:
    """The status the edge answers ``request`` with, read while it is still being sent.

    The edge answers before reading all of an oversized request and then closes; the unread
    rest makes the connection end in a reset, which would discard an answer read too late.
    """
    with socket.create_connection(("127.0.0.1", platform.port), timeout=30) as conn:
        sender = threading.Thread(target=_send_ignoring_reset, args=(conn, request))
        sender.start()
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n" not in received and (chunk := conn.recv(4096)):
                received += chunk
        sender.join()
    assert received.startswith(b"HTTP/1.1 "), received
    return int(received.split()[1])


def _send_ignoring_reset(conn: socket.socket, data: bytes) -> None:
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        conn.sendall(data)


EDGE_TOO_LARGE = {"errors": [{"message": "The request body is over the 1 MiB limit"}]}
SERVICE_TOO_LARGE = {"errors": [{"message": "Request body too large"}]}


def read_answer(platform: LocalPlatform, request: bytes) -> tuple[int, Any]:
    """Send ``request`` on a raw connection; the status and JSON body the edge answers with.

    Read while the request is still being sent, as in ``status_of_oversized``.
    """
    with socket.create_connection(("127.0.0.1", platform.port), timeout=30) as conn:
        sender = threading.Thread(target=_send_ignoring_reset, args=(conn, request))
        sender.start()
        answer = _read_answer(conn, time.monotonic() + 30)
        sender.join()
    return answer


def _read_answer(conn: socket.socket, deadline: float) -> tuple[int, Any]:
    """The status and JSON body of the response on ``conn``, read by its Content-Length."""
    received = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while not _complete(received):
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            if not (chunk := conn.recv(65536)):
                break
            received += chunk
    assert _complete(received), f"no whole answer before the deadline: {received!r}"
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _complete(received: bytes) -> bool:
    head, separator, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(separator and length and len(body) >= int(length.group(1)))


def _closed_before(conn: socket.socket, deadline: float) -> bool:
    """Whether the peer closes ``conn`` (sending nothing more) before ``deadline``."""
    try:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _chunked_request(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (body[i : i + 65536] for i in range(0, len(body), 65536))
    )
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"


def who(client: httpx.Client) -> str | None:
    response = client.get("/api/users/currentuser")
    assert response.status_code == 200, response.text
    user: dict[str, Any] | None = response.json()["currentUser"]
    return user["email"] if user else None


# -- 1. the edge keeps nothing between requests ------------------------------------------------


def test_two_clients_never_change_who_the_other_is(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    with platform.client() as anonymous:
        a = new_user()
        assert who(anonymous) is None  # the edge did not keep A's Set-Cookie
        b = new_user()
        assert (who(a.http), who(b.http), who(anonymous)) == (a.email, b.email, None)

        # B signs in again and A signs out: neither touches the other, nor the anonymous one.
        signin = b.http.post("/api/users/signin", json={"email": b.email, "password": b.password})
        assert signin.status_code == 200, signin.text
        assert a.http.post("/api/users/signout").status_code in (200, 204)
        assert (who(a.http), who(b.http), who(anonymous)) == (None, b.email, None)


def test_an_anonymous_request_cannot_act_for_the_last_signed_in_user(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    seller, buyer = new_user(), new_user()
    order = buyer.order(seller.list_ticket("Opera", "15")["id"])
    buyer.http.get("/api/users/currentuser")  # the buyer's session is the last one through
    with platform.client() as anonymous:
        cancel = anonymous.delete(f"/api/orders/{order['id']}")
    assert cancel.status_code == 401, cancel.text
    assert buyer.order_status(order["id"]) == "created"


def test_many_clients_at_once_each_stay_who_they_are(platform: LocalPlatform) -> None:
    def sign_up_and_ask() -> tuple[str, str | None]:
        user = User(platform)
        user.http.timeout = httpx.Timeout(60)  # argon2 on a busy machine, many at once
        user.sign_up()
        try:
            return user.email, who(user.http)
        finally:
            user.http.close()

    def ask_anonymously() -> tuple[str, str | None]:
        with platform.client() as client:
            return "anonymous", who(client)

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(ask_anonymously if i % 4 else sign_up_and_ask) for i in range(32)]
        answers = [f.result() for f in futures]
    assert all(seen == (None if asked == "anonymous" else asked) for asked, seen in answers), (
        answers
    )


def test_set_cookie_reaches_the_browser_as_the_service_sent_it(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    user = new_user()
    credentials = {"email": user.email, "password": user.password}
    auth = f"http://127.0.0.1:{platform.status()['processes']['auth']['port']}"
    with httpx.Client(base_url=auth, trust_env=False, timeout=10) as direct:
        from_auth = direct.post("/api/users/signin", json=credentials)
    with platform.client() as browser:
        through_edge = browser.post("/api/users/signin", json=credentials)

    def shape(response: httpx.Response) -> list[str]:
        # The token differs (it carries its issue time); everything around it must not.
        return [
            re.sub(r"^session=[^;]+", "session=<token>", v)
            for v in response.headers.get_list("set-cookie")
        ]

    assert from_auth.status_code == through_edge.status_code == 200
    assert shape(through_edge) == shape(from_auth)
    assert shape(through_edge)[0].startswith("session=<token>; HttpOnly")


def test_the_request_id_is_the_edges_not_the_clients(platform: LocalPlatform) -> None:
    with platform.client() as client:
        response = client.get("/api/users/currentuser", headers={"X-Request-Id": "mine-123"})
    request_id = response.headers["x-request-id"]
    assert request_id != "mine-123"
    assert uuid.UUID(request_id)
    assert "[mine-123" not in platform.output()


# -- 2. a real reverse proxy: limits, timeouts, paths -------------------------------------------


def test_request_headers_over_32_kib_get_431(platform: LocalPlatform) -> None:
    path = "/api/users/currentuser"
    under = send(platform, "GET", path, [("X-Padding", "a" * (30 * 1024))])
    assert under[0] == 200
    start = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
    big = start + b"X-Padding: " + b"a" * (33 * 1024) + b"\r\n\r\n"
    assert status_of_oversized(platform, big) == 431
    many = start + b"".join(b"X-H%d: 1\r\n" % i for i in range(5000)) + b"\r\n"
    assert status_of_oversized(platform, many) == 431


def test_request_bodies_over_1_mib_get_413(platform: LocalPlatform) -> None:
    path = "/api/tickets"
    json_type = [("Content-Type", "application/json")]
    status, body = send(platform, "POST", path, json_type, b" " * (1024 * 1024))
    # It passed the edge and reached tickets, which refuses it under its own, smaller limit. It
    # answers from Content-Length before reading the body, so the edge may find the connection
    # closed under the rest of the body it forwards (a 502): either way the edge let it through.
    assert status in (413, 502), body
    if status == 413:
        assert json.loads(body) == {"errors": [{"message": "Request body too large"}]}
    # One byte more: the edge refuses it from Content-Length, before reading any of it.
    start = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    declared = f"{start}Content-Length: {1024 * 1024 + 1}\r\n\r\n".encode()
    assert read_answer(platform, declared) == (413, EDGE_TOO_LARGE)


def test_a_chunked_body_over_1_mib_gets_413_in_the_common_shape(platform: LocalPlatform) -> None:
    # No Content-Length: the edge counts the body and refuses it once past 1 MiB, unless tickets
    # (its own limit is 64 KiB) answers first; either answer has the common shape.
    request = _chunked_request("/api/tickets", b" " * (1024 * 1024 + 1))
    status, body = read_answer(platform, request)
    assert (status, body) in ((413, EDGE_TOO_LARGE), (413, SERVICE_TOO_LARGE)), body


def test_a_client_that_never_finishes_its_headers_is_cut_off(platform: LocalPlatform) -> None:
    with socket.create_connection(("127.0.0.1", platform.port)) as conn:
        conn.sendall(b"GET /api/users/currentuser HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        conn.settimeout(60)  # the edge's header timeout is 10 s; this only bounds a failure
        started = time.monotonic()
        received = conn.recv(1024)
        while received and not received.startswith(b"HTTP/1.1 408"):
            received = conn.recv(1024)
    assert time.monotonic() - started < 60, "the connection was still open"


# The edge's READ_BODY_TIMEOUT is 15 s; this only bounds a failure (a connection left open).
CUT_OFF_WITHIN = 40.0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_that_stops_sending_its_body_is_answered_408_and_cut_off(
    platform: LocalPlatform, framing: str
) -> None:
    marker = uuid.uuid4().hex
    head = f"POST /api/tickets/{marker} HTTP/1.1\r\nHost: x\r\n"
    head += "Content-Type: application/json\r\n"
    if framing == "chunked":
        request = f"{head}Transfer-Encoding: chunked\r\n\r\n8\r\n" + '{"title"'
    else:
        request = f"{head}Content-Length: 1000\r\n\r\n" + '{"title": "half'
    with socket.create_connection(("127.0.0.1", platform.port)) as conn:
        conn.sendall(request.encode())  # ... and then nothing more
        deadline = time.monotonic() + CUT_OFF_WITHIN
        answer = _read_answer(conn, deadline)
        assert _closed_before(conn, deadline), "the connection was still open"
    assert answer == (408, {"errors": [{"message": "The request body did not arrive in time"}]})
    # The edge holds a body until it is whole: tickets never saw any of this request.
    assert marker not in platform.output()


INTERNAL = ["/openapi.json", "/docs", "/healthz", "/readyz"]
SPELLINGS = [
    "{e}",
    "/api/users/..{e}",
    "/api/users/../..{e}",
    "/api/users/%2e%2e{e}",
    "/api/users/%2E%2E{e}",
    "/api/users/.%2e{e}",
    "/api/users/%2e%2e%2f..{e}",
    "/api/users/..%2f..{e}",
    "/api/users/..%5c..{e}",
    "/api/users/./..{e}",
    "/api/users\\..\\..{e}",
    "/api/users/..;{e}",
    "/api/users;/..{e}",
    "//{e}",
    "/api/users//..{e}",
    "/api/tickets/../users/currentuser",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_no_spelling_of_a_path_reaches_an_internal_endpoint(
    platform: LocalPlatform, spelling: str
) -> None:
    for endpoint in INTERNAL:
        path = spelling.format(e=endpoint)
        status, body = send(platform, "GET", path)
        assert (status, json.loads(body)) in ((404, NOT_FOUND), (400, NOT_NORMAL)), path


def test_paths_in_normal_form_still_reach_their_service(platform: LocalPlatform) -> None:
    status, body = send(platform, "GET", "/api/users/currentuser")
    assert (status, json.loads(body)) == (200, {"currentUser": None})
    assert send(platform, "GET", "/api/tickets?limit=1")[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        ("GET", "/api/users/currentuser", [], None),  # a service's answer
        ("POST", "/api/tickets", [("Content-Type", "application/json")], b"{"),  # its error
        ("GET", "/api/nowhere", [], None),  # the edge's 404
        ("GET", "/api/users/../users", [], None),  # the edge's 400
        ("POST", "/api/tickets", [("Content-Length", str(2 * 1024 * 1024))], b""),  # its 413
    ],
    ids=["service", "service-error", "edge-404", "edge-400", "edge-413"],
)
def test_no_answer_names_the_software_behind_it(
    platform: LocalPlatform, method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    """``Server`` and ``Via`` would tell an attacker which proxy and server to look up."""
    status, answer_headers, _ = exchange(platform, method, path, headers, body)
    assert status < 500
    named = {k: v for k, v in answer_headers if k.lower() in {"server", "via"}}
    assert named == {}, (status, named)
