"""The command line every service shares: ``python -m <service> serve|migrate|parked``.

The web client, which owns no database and consumes no events, has only ``serve``
(:func:`web_main`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import multiprocessing
import socket
import sys
import uuid
from collections.abc import Callable
from typing import TypeVar

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE

from ticketing_common.db import make_engine, make_sessionmaker
from ticketing_common.messaging import Consumer
from ticketing_common.messaging.parking import list_parked
from ticketing_common.observability import configure_logging
from ticketing_common.settings import S, ServiceSettings, W, WebSettings

T = TypeVar("T")

# Kubernetes gives 30s between SIGTERM and SIGKILL; finish in-flight work well inside that.
GRACEFUL_SHUTDOWN_SECONDS = 20
# How long a service keeps an idle connection open for the next request: longer than the proxy
# in front of it keeps its own idle (the local edge and ingress-nginx: 60s), so the proxy closes
# first. uvicorn's default (5s) left a race: the proxy sent a request on a connection the
# service was closing, and its client got a 503 (a POST is not tried again).
KEEP_ALIVE_SECONDS = 75


def service_main(
    settings_factory: Callable[[], S],
    app_factory: Callable[[S], FastAPI],
    *,
    consumer_factory: Callable[[S], Consumer] | None = None,
    argv: list[str] | None = None,
) -> int:
    """``consumer_factory`` gives the service's consumer to the ``parked`` commands (built only
    for them: the app builds its own). Migrations are those of the app factory's package."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = _add_serve_command(commands, "run the HTTP service, its relay and consumer")
    serve_command.add_argument("--migrate", action="store_true", help="apply migrations first")
    commands.add_parser("migrate", help="apply database migrations")
    parked = commands.add_parser("parked", help="events whose handler kept failing")
    parked_commands = parked.add_subparsers(dest="parked_command", required=True)
    parked_commands.add_parser("list")
    replay = parked_commands.add_parser("replay")
    replay.add_argument("event_id", type=uuid.UUID)
    args = parser.parse_args(argv)

    settings = load_settings(settings_factory)
    if settings is None:
        return 2
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    if args.command == "migrate" or (args.command == "serve" and args.migrate):
        code = migrate(app_factory.__module__, settings.database_url)
        if code != 0:
            print(f"migrations failed (exit code {code})", file=sys.stderr)
            return 1
    if args.command == "serve":
        serve(app_factory(settings), settings, args.host, args.port)
    elif args.command == "parked":
        if consumer_factory is None:
            print("this service consumes no events")
            return 1
        consumer = consumer_factory(settings)
        return asyncio.run(
            _parked(settings, consumer, args.parked_command, getattr(args, "event_id", None))
        )
    return 0


def migrate(module: str, database_url: str) -> int:
    """Apply the migrations of ``module``'s service in a forked child; its exit code.

    Apart, so that Alembic (with Mako and Pygments under it, several MiB) never loads into a
    process that goes on to serve: local mode migrates with ``serve --migrate``. A fork, not a
    new interpreter: nothing to import again, and no event loop or thread is running yet.
    """
    child = multiprocessing.get_context("fork").Process(
        target=_upgrade, args=(module, database_url), name="migrate"
    )
    child.start()
    child.join()
    return child.exitcode or 0


def _upgrade(module: str, database_url: str) -> None:
    from ticketing_common.migrations import migrations_dir, upgrade

    upgrade(migrations_dir(module), database_url)


def load_settings(settings_factory: Callable[[], T]) -> T | None:
    """The settings, or None once stderr says which setting is wrong and why (a configuration
    mistake, not a traceback)."""
    try:
        return settings_factory()
    except ValidationError as exc:
        print(f"refusing to start: {settings_problems(exc)}", file=sys.stderr)
        return None


def settings_problems(exc: ValidationError) -> str:
    """``JWT_KEY: Field required; ...``: each problem under the variable that sets it."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        variable = "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{variable}: {message}" if variable else message)
    return "; ".join(problems)


def web_main(
    *,
    settings_factory: Callable[[], W],
    app_factory: Callable[[W], FastAPI],
    argv: list[str] | None = None,
) -> int:
    """``python -m <server> serve`` for a web server with no database and no events."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve_command(commands, "run the HTTP server")
    args = parser.parse_args(argv)
    settings = load_settings(settings_factory)
    if settings is None:
        return 2
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    serve(app_factory(settings), settings, args.host, args.port)
    return 0


def _add_serve_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], help: str
) -> argparse.ArgumentParser:
    serve_command = commands.add_parser("serve", help=help)
    serve_command.add_argument("--host", default="0.0.0.0")
    serve_command.add_argument("--port", type=int, default=8000)
    return serve_command


def serve(app: FastAPI, settings: WebSettings, host: str, port: int) -> None:
    server = make_server(app, settings, host, port)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def make_server(app: FastAPI, settings: WebSettings, host: str, port: int) -> uvicorn.Server:
    """What ``uvicorn.run`` would run, less what a service never uses: no websocket protocol
    (nothing serves one, so ``websockets`` is never imported), no reload, no worker processes."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="none",
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # Ours (observability.RequestIdMiddleware) has the request id; uvicorn's would still
        # format its arguments per request before finding its logger disabled.
        access_log=False,
        # No `Server: uvicorn`: an answer does not name the software behind it.
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    return _Server(config)


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_garbage_collector()
        release_free_heap()


# Objects allocated between collections of the youngest generation (CPython's default: 700). A
# request or an event allocates hundreds: at the default, collections ran every few of them.
YOUNG_GENERATION_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """What start-up built (modules, the app, the schemas) lives as long as the process: moved
    out of the collector's reach, no collection walks it again; and the youngest generation is
    collected less often. Measured on the event pipeline: a tenth to a sixth less CPU per event
    handled or relayed."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)


def release_free_heap() -> None:
    """Give back to the system the C heap that start-up (imports, schema building) used and
    freed: glibc keeps it otherwise, a few MiB of every service's resident memory."""
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if malloc_trim is not None:
        malloc_trim(0)


async def _parked(
    settings: ServiceSettings, consumer: Consumer, command: str, event_id: uuid.UUID | None
) -> int:
    engine = make_engine(settings.database_url, pool_size=1)
    sessionmaker = make_sessionmaker(engine)
    try:
        if command == "list":
            for row in await list_parked(sessionmaker):
                print(json.dumps(row, default=str))
            return 0
        assert event_id is not None
        replayed = await consumer.replay(sessionmaker, event_id)
        print("replayed" if replayed else "failed again; see `parked list`")
        return 0 if replayed else 1
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
