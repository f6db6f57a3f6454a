"""The scaffolding every service shares: one factory builds the FastAPI app.

It wires the error handlers, request ids and logs, ``/healthz`` and ``/readyz``, and a lifespan
that opens the database and NATS, ensures the stream, and runs the outbox relay and the
service's consumer; on shutdown it stops taking events, finishes the one in hand, flushes the
outbox and drains NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ticketing_common.db import make_engine, make_sessionmaker
from ticketing_common.errors import error_item, error_response, install_error_handlers
from ticketing_common.messaging import Consumer, ConsumerRunner, OutboxRelay, ensure_stream
from ticketing_common.messaging.connection import connect_nats
from ticketing_common.messaging.parking import count_parked
from ticketing_common.observability import RequestIdMiddleware
from ticketing_common.settings import ServiceSettings

log = logging.getLogger(__name__)

# The API's bodies are a few hundred bytes; refusing big ones early keeps a flood of them from
# costing memory and parse time (the edge has its own, larger cap).
MAX_REQUEST_BODY_BYTES = 64 * 1024
BODY_TOO_LARGE = "Request body too large"


@dataclass
class Runtime:
    """What a running service holds: its database, its NATS connection, its background work."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    nc: NatsClient
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: bool = False
    # Set when background work died: /healthz then fails, so the orchestrator restarts us.
    failure: str | None = None

    def start(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._task_done)
        self.tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self.stopping or task.cancelled():
            return
        error = task.exception()
        self.failure = f"{task.get_name()} stopped: {error!r}"
        log.critical("background task %s", self.failure, exc_info=error)


@contextlib.asynccontextmanager
async def run_service(
    settings: ServiceSettings, consumer: Consumer | None
) -> AsyncIterator[Runtime]:
    engine = make_engine(settings.database_url)
    sessionmaker = make_sessionmaker(engine)
    nc = await connect_nats(settings)
    js = nc.jetstream()
    await ensure_stream(js, replicas=settings.nats_stream_replicas)
    relay = OutboxRelay(
        engine,
        js,
        poll_seconds=settings.outbox_poll_seconds,
        stream_replicas=settings.nats_stream_replicas,
    )
    relay.attach(sessionmaker)  # what requests and handlers commit is sent at once
    runner = (
        ConsumerRunner(
            consumer,
            js,
            sessionmaker,
            max_deliveries=settings.consumer_max_deliveries,
            ack_wait_seconds=settings.consumer_ack_wait_seconds,
            concurrency=settings.consumer_concurrency,
            stream_replicas=settings.nats_stream_replicas,
        )
        if consumer
        else None
    )
    runtime = Runtime(engine, sessionmaker, nc)
    runtime.start(relay.run(), "outbox-relay")
    if runner:
        runtime.start(runner.run(), "consumer")
    try:
        yield runtime
    finally:
        # Stop taking events, finish the one in hand, send what was committed, then drain.
        runtime.stopping = True
        if runner:
            runner.stop()
        relay.stop()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.drain()
        await engine.dispose()


class RequestBodyLimit:
    """Answers 413 to a body over ``max_bytes``: at once when ``Content-Length`` says so, else
    (a chunked body) as soon as the bytes read so far pass it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, [error_item(BODY_TOO_LARGE)])(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the route's body read: FastAPI passes HTTPException through to
                # the error handler, which answers in the common shape.
                raise HTTPException(413, BODY_TOO_LARGE)
            return message

        await self.app(scope, counting_receive, send)


async def _ping(engine: AsyncEngine, consumer: Consumer | None) -> dict[str, int]:
    """Reach the database; a consuming service also counts its parked events (the figure an
    operator watches: above zero, an entity's events are held until a replay)."""
    async with engine.connect() as conn:
        if consumer is None:
            await conn.execute(text("SELECT 1"))
            return {}
        return {"parkedEvents": await count_parked(conn)}


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    routers: Sequence[APIRouter],
    consumer: Consumer | None = None,
    description: str = "",
    configure: Callable[[FastAPI], None] | None = None,
    max_body_bytes: int = MAX_REQUEST_BODY_BYTES,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with run_service(settings, consumer) as runtime:
            app.state.runtime = runtime
            app.state.sessionmaker = runtime.sessionmaker
            log.info("%s started", settings.service_name)
            yield
            log.info("%s stopping", settings.service_name)

    app = FastAPI(title=title, description=description, lifespan=lifespan)
    app.state.settings = settings
    # Inside the request-id middleware (added next), so a refused body is logged with its id.
    app.add_middleware(RequestBodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    for router in routers:
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        if runtime is not None and runtime.failure is not None:
            return error_response(503, [error_item(runtime.failure)])
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        problems = []
        figures: dict[str, int] = {}
        if runtime is None:
            problems.append(error_item("Service is starting"))
        else:
            try:
                figures = await asyncio.wait_for(_ping(runtime.engine, consumer), 2)
            except Exception:
                problems.append(error_item("Database unreachable"))
            if not runtime.nc.is_connected:
                problems.append(error_item("NATS unreachable"))
        if problems:
            return error_response(503, problems)
        return JSONResponse({"status": "ready", **figures})

    if configure:
        configure(app)
    return app
