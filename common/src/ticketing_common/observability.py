"""Structured JSON logs carrying a request id.

One record is one line: JSON escapes every control character, and text lines escape what a
request could use to end a line early or disguise one (a ``%0a`` in a path must not forge an
entry).

The id comes from the ``X-Request-Id`` header (the edge sets one) or is made here, is echoed
back, travels in the headers of every event the request causes (see ``messaging.outbox``) and is
restored by the consumer that handles them, so one id follows a purchase through every service.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ticketing_common.errors import (
    ServiceUnavailableError,
    app_error_response,
    database_unavailable,
    error_item,
    error_response,
)
from ticketing_common.models import BIDI_CONTROLS

REQUEST_ID_HEADER = "X-Request-Id"
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
service_name_var: ContextVar[str] = ContextVar("service_name", default="-")

access_log = logging.getLogger("ticketing.access")
error_log = logging.getLogger("ticketing.errors")
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# C0 controls (CR, LF...), DEL, C1 controls (NEL...), line and paragraph separators, and the
# bidi controls that make a line read differently from what it holds.
UNSAFE_IN_A_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + "]"
)
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every character that could break or disguise a log line escaped."""

    def escaped(match: re.Match[str]) -> str:
        char = match.group()
        return ESCAPES.get(char) or (
            f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
        )

    return UNSAFE_IN_A_LINE.sub(escaped, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": service_name_var.get(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := request_id_var.get()) is not None:
            entry["requestId"] = request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii (the default) escapes every control character and line separator.
        return json.dumps(entry, default=str, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """One line per record for people; a traceback follows on lines marked ``|`` so that no
    text from an exception's message can pass for a record of its own."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = request_id_var.get()
        prefix = f"[{request_id[:8]}] " if request_id else ""
        fields = getattr(record, "fields", {})
        extra = " " + " ".join(f"{k}={v}" for k, v in fields.items()) if fields else ""
        line = escape_controls(
            f"{record.levelname:<7} {record.name}: {prefix}{record.getMessage()}{extra}"
        )
        if record.exc_info:
            traceback_lines = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n    | {escape_controls(t)}" for t in traceback_lines)
        return line


def configure_logging(service_name: str, level: str = "INFO", json_lines: bool = True) -> None:
    service_name_var.set(service_name)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would duplicate ours, without the request id.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives every request an id, logs it, and answers an unexpected failure with a clean 500.

    Pure ASGI (BaseHTTPMiddleware would break streaming and contextvars). It sits inside
    Starlette's outermost error middleware, so the 500 it sends still carries the request id,
    and so does the log line with the traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"")
        # Taken as given only if it is a sane token; anything else is replaced, not echoed.
        request_id = incoming.decode("latin-1")
        if not REQUEST_ID_PATTERN.fullmatch(request_id):
            request_id = new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if database_unavailable(exc):
                # An outage (PostgreSQL restarting, a connection cut), not a bug: the client
                # may retry; the line says what happened without a traceback.
                error_log.warning(
                    "database unavailable on %s %s: %r", scope["method"], scope["path"], exc
                )
                response = app_error_response(ServiceUnavailableError())
            else:
                error_log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                response = error_response(500, [error_item("Something went wrong")])
            if response_started:
                raise  # too late for a clean answer: let the server drop the connection
            await response(scope, receive, send_with_id)
        finally:
            if scope["path"] not in ("/healthz", "/readyz"):
                access_log.info(
                    "%s %s",
                    scope["method"],
                    scope["path"],
                    extra={
                        "fields": {
                            "status": status,
                            "durationMs": round((time.perf_counter() - started) * 1000, 1),
                        }
                    },
                )
            request_id_var.reset(token)
