"""The local edge: one origin for every service, routed like the Kubernetes Ingress.

A small reverse proxy (an ASGI app on uvicorn, httpx to the services). It forwards the
request as ingress-nginx would: the original ``Host``, ``X-Forwarded-For/-Proto/-Host/-Port``
(set from what the edge saw; any the client sent are dropped) and an
``X-Request-Id`` (made here when the caller sent none, so one id follows the request through
the services and the events it causes). A service that is down (restarting after a crash)
answers 503 with ``Retry-After`` instead of hanging.

Until the web client exists, ``/`` is a page made here that lists the API.

Run by the launcher as ``python -m ticketing_local.edge --port N`` with the services' addresses
in ``TICKETING_UPSTREAMS`` (JSON: service name -> base URL).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from ticketing_common.http import outbound_client
from ticketing_local.routing import RoutingTable

UPSTREAMS_ENV = "TICKETING_UPSTREAMS"
# Headers that describe one connection, not the request (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
MAX_BODY_BYTES = 10 * 1024 * 1024
TIMEOUT = httpx.Timeout(60.0, connect=5.0)

API_SUMMARY = [
    ("POST", "/api/users/signup", "sign up {email, password}"),
    ("POST", "/api/users/signin", "sign in {email, password}"),
    ("POST", "/api/users/signout", "sign out"),
    ("GET", "/api/users/currentuser", "who is signed in"),
    ("GET", "/api/tickets", "tickets available to buy"),
    ("POST", "/api/tickets", "list a ticket {title, price}"),
    ("GET", "/api/tickets/{id}", "one ticket"),
    ("PUT", "/api/tickets/{id}", "change your ticket {title, price}"),
    ("GET", "/api/orders", "your orders"),
    ("POST", "/api/orders", "reserve a ticket {ticketId}"),
    ("GET", "/api/orders/{id}", "one of your orders"),
    ("DELETE", "/api/orders/{id}", "cancel your order"),
    ("POST", "/api/payments", "pay for an order {orderId, token: tok_visa}"),
]


class Edge:
    def __init__(
        self,
        routes: RoutingTable,
        upstreams: Mapping[str, str],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.routes = routes
        self.upstreams = {name: url.rstrip("/") for name, url in upstreams.items()}
        self._transport = transport  # tests put the services in process
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # No cookie jar: it would keep one person's session (from a Set-Cookie passing
            # through) and send it with everyone's requests.
            self._client = outbound_client(timeout=TIMEOUT, transport=self._transport)
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: nothing behind the edge uses them
            await send({"type": "websocket.close", "code": 1000})
            return
        route = self.routes.match(scope["path"])
        upstream = self.upstreams.get(route.service) if route else None
        if upstream is None:
            if scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
                await _respond(send, 200, self._index_page(), "text/html; charset=utf-8")
            else:
                await _respond_error(send, 404, "Not found")
            return
        assert route is not None
        await self._proxy(scope, receive, send, route.service, upstream)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, service: str, upstream: str
    ) -> None:
        try:
            body = await _read_body(receive)
        except ClientDisconnectedError:
            return  # nobody to answer, and nothing complete to forward
        if body is None:
            await _respond_error(send, 413, "Request body too large")
            return
        target = upstream + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        request = self.client.build_request(
            scope["method"], target, headers=_forwarded_headers(scope), content=body
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.ConnectError:
            await _respond_error(
                send,
                503,
                f"The {service} service is unavailable; try again shortly",
                extra_headers=[(b"retry-after", b"1")],
            )
            return
        except httpx.TimeoutException:
            await _respond_error(send, 504, f"The {service} service did not answer in time")
            return
        except httpx.TransportError:
            await _respond_error(send, 502, f"The {service} service failed to answer")
            return
        try:
            headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.TransportError:
                pass  # the service died mid-answer; end what was sent
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    def _index_page(self) -> bytes:
        rows = "\n".join(
            f"<tr><td><code>{m}</code></td><td><code>{html.escape(p)}</code></td>"
            f"<td>{html.escape(d)}</td></tr>"
            for m, p, d in API_SUMMARY
        )
        docs = "\n".join(
            f'<li>{html.escape(name)}: <a href="{url}/docs">{url}/docs</a></li>'
            for name, url in sorted((n, html.escape(u)) for n, u in self.upstreams.items())
        )
        routes = "\n".join(
            f"<li><code>{html.escape(r.prefix)}</code> &rarr; {html.escape(r.service)}</li>"
            for r in self.routes.routes
        )
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ticketing (local)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}}
td{{padding:.15rem .8rem .15rem 0}}</style></head>
<body><h1>Ticketing &mdash; local mode</h1>
<p>The web client is not part of this build yet. The API is served on this origin:</p>
<table>{rows}</table>
<p>Money is a decimal string or number with at most 2 places; the session is the
<code>session</code> cookie set by sign-up and sign-in.</p>
<h2>Routing</h2><ul>{routes}</ul>
<h2>Each service's OpenAPI documentation (direct, not through the edge)</h2><ul>{docs}</ul>
</body></html>
"""
        return page.encode()


def _forwarded_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request's headers as the service should see them.

    Hop-by-hop headers go, and so do those the client named in ``Connection`` (RFC 9110
    section 7.6.1). Every forwarding header the client sent (``X-Forwarded-*``, ``Forwarded``,
    ``X-Real-IP``) goes too, and the edge sets them from what it saw itself, as ingress-nginx
    does by default: a client cannot choose the address, scheme or host a service believes
    the request came from (the services trust these headers from any peer).
    """
    dropped = set(HOP_BY_HOP)
    for name, value in scope["headers"]:
        if name.lower() == b"connection":
            dropped.update(t.strip().lower() for t in value.split(b",") if t.strip())
    # Values trimmed: HTTP ignores surrounding blanks, but the upstream client refuses them.
    headers = [
        (k, v.strip(b" \t"))
        for k, v in scope["headers"]
        if (key := k.lower()) not in dropped
        and not key.startswith(b"x-forwarded-")
        and key not in (b"forwarded", b"x-real-ip")
    ]
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", client[0].encode()))
        headers.append((b"x-real-ip", client[0].encode()))
    headers.append((b"x-forwarded-proto", scope["scheme"].encode()))
    host = next((v for k, v in headers if k.lower() == b"host"), b"")
    if host:
        headers.append((b"x-forwarded-host", host))
    server = scope.get("server")
    if server and server[1] is not None:
        headers.append((b"x-forwarded-port", str(server[1]).encode()))
    if not any(k.lower() == b"x-request-id" for k, _ in headers):
        headers.append((b"x-request-id", uuid.uuid4().hex.encode()))
    return headers


class ClientDisconnectedError(Exception):
    """The client went away before its request body arrived in full."""


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (API requests are small), or None when it is too large.

    Raises ClientDisconnectedError when the client leaves mid-body: half a request must never
    reach a service (a truncated JSON body could still parse, e.g. a cut-off number).
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_error(
    send: Send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    # The same error shape as every service: {"errors": [{"message": ...}]}.
    body = json.dumps({"errors": [{"message": message}]}).encode()
    await _respond(send, status, body, "application/json", extra_headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The local edge (reverse proxy)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    upstreams: dict[str, Any] = json.loads(os.environ.get(UPSTREAMS_ENV, "{}"))
    edge = Edge(RoutingTable.load(), upstreams)
    # The services log every request themselves; the edge adds nothing but noise.
    uvicorn.run(
        edge,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
