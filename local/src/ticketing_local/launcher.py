"""Brings the whole platform up on one machine, keeps it up, and takes it all down again.

Order: PostgreSQL and NATS (embedded, from wheels) -> one database per service -> every
service as its own process on a free port, migrating its database first -> the edge (Caddy) on
``PORT`` (8080) -> wait until every service answers ``/readyz`` -> print the URL. A crashed
service is restarted, and so are PostgreSQL and NATS (the platform stops if they cannot be);
SIGINT/SIGTERM/SIGHUP stops the services (gracefully), then NATS, then PostgreSQL.

``REPLICAS=N`` runs N processes of every service (the web client too), each on its own port:
the edge balances each route across them, and the web client calls each service through a
balanced address the edge serves. Replicas of a service share its database (so its outbox, which
the relays take row by row, ``FOR UPDATE SKIP LOCKED``) and its durable consumer (each event goes
to one of them; the inbox drops a redelivery). Replica 1 is named after its service, replica k
``<service>-k``; each is restarted on its own should it crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from ticketing_common.http import outbound_client
from ticketing_local.datafolder import DataFolder, process_start_ticks
from ticketing_local.edge import caddy_binary, caddy_environment, write_config
from ticketing_local.processes import ManagedProcess, Output, describe_exit
from ticketing_local.routing import RoutingTable

T = TypeVar("T")

# The backend services, in start order; the web client joins when its package exists.
BACKEND_SERVICES = ("auth", "tickets", "orders", "expiration", "payments")
OPTIONAL_SERVICES = ("client",)
READY_TIMEOUT_SECONDS = 180.0
# Services shut down gracefully within 20s (ticketing_common.cli); give them a little more.
STOP_TIMEOUT_SECONDS = 25.0
# PostgreSQL or NATS that died is restarted at once; should that fail (its port taken, its
# folder unwritable...), a few more tries after a growing pause, then the platform stops.
INFRA_RESTART_ATTEMPTS = 4
INFRA_FIRST_RETRY_DELAY = 1.0


class PlatformError(RuntimeError):
    """The platform cannot run; the message says why (shown as ``error: ...``)."""


class StartupError(PlatformError):
    pass


class StopRequestedError(Exception):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    has_migrations: bool


def discover_services() -> list[Service]:
    """The services installed in this environment (every backend one must be)."""
    services = []
    for name in (*BACKEND_SERVICES, *OPTIONAL_SERVICES):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            if name in OPTIONAL_SERVICES:
                continue
            raise StartupError(
                f"the {name} service is not installed (run `uv sync --all-packages`)"
            )
        package = Path(next(iter(spec.submodule_search_locations)))
        services.append(Service(name, (package / "migrations" / "env.py").exists()))
    return services


# The services the web client calls, server-side.
CLIENT_CALLS = ("auth", "tickets", "orders", "payments")


def client_env(upstreams: dict[str, str]) -> dict[str, str]:
    """The web client calls the services straight, at their own addresses or balanced ones
    (never through the edge): ``AUTH_URL``, ``TICKETS_URL``, ``ORDERS_URL``, ``PAYMENTS_URL``."""
    return {f"{name.upper()}_URL": upstreams[name] for name in CLIENT_CALLS}


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def replica_name(service: str, replica: int) -> str:
    """Replica 1 keeps the service's name (so one replica is named as before), then ``-k``."""
    return service if replica == 1 else f"{service}-{replica}"


class Launcher:
    def __init__(self, data: DataFolder, port: int, output: Output, replicas: int = 1) -> None:
        self.data = data
        self.port = port
        self.replicas = replicas
        self.url = f"http://localhost:{port}"
        self.output = output
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        self.processes: dict[str, ManagedProcess] = {}
        self.ready = False
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self.infra_restart_attempts = INFRA_RESTART_ATTEMPTS
        self.infra_first_retry_delay = INFRA_FIRST_RETRY_DELAY

    def log(self, message: str) -> None:
        self.output.line("launcher", message)

    def request_stop(self) -> None:
        if self._stop.is_set():
            # A second Ctrl-C: the user will not wait for graceful shutdowns.
            self.log("stopping now: killing the services")
            for process in self.processes.values():
                process.kill()
            return
        self.log("stopping (services first, then NATS and PostgreSQL)")
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # SIGHUP: the terminal it runs in was closed; stop everything rather than leave the
        # servers running with nobody to stop them.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._start()
            self.log(f"Ticketing is up: {self.url}  (data in {self.data.path}; Ctrl-C stops it)")
            await self._watch_infrastructure()
            return 0
        except StopRequestedError:
            return 0
        except PlatformError as exc:
            self.log(f"error: {exc}")
            return 1
        finally:
            await self._shutdown()

    async def _until_stopped(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless a stop is requested first (then raise StopRequestedError)."""
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise StopRequestedError
        return task.result()

    async def _start(self) -> None:
        if not _port_is_free(self.port):
            raise StartupError(f"port {self.port} is in use; choose another with PORT=...")
        services = discover_services()
        jwt_key = os.environ.get("JWT_KEY") or self.data.jwt_key()

        await self._start_postgres()
        await self._start_nats()
        assert self.postgres is not None and self.nats is not None
        self._write_status()
        with_db = [s.name for s in services if s.has_migrations]
        await self._until_stopped(self._create_databases(with_db))

        env = self._service_env(jwt_key)
        upstreams: dict[str, list[str]] = {s.name: [] for s in services}
        # With replicas, the web client reaches each service through a balanced address.
        balancers = {}
        if self.replicas > 1 and "client" in upstreams:
            balancers = {name: free_port() for name in CLIENT_CALLS}
        # Replica 1 of every service migrates its database as it starts (in the serving
        # process: no second interpreter start); the others start once it is ready.
        for replica in range(1, self.replicas + 1):
            if replica == 2:
                self._write_status()
                await self._until_stopped(self._wait_services_ready(list(self.processes)))
            for service in services:
                port = free_port()
                upstreams[service.name].append(f"http://127.0.0.1:{port}")
                argv = [sys.executable, "-m", service.name, "serve", "--host", "127.0.0.1"]
                argv += ["--port", str(port)]
                service_env = env | self._nats_credentials(service.name)
                if service.has_migrations:
                    argv += ["--migrate"] if replica == 1 else []
                    service_env["DATABASE_URL"] = self.postgres.database_url(service.name)
                if service.name == "client":
                    service_env |= client_env(
                        {n: f"http://127.0.0.1:{p}" for n, p in balancers.items()}
                        or {n: upstreams[n][0] for n in CLIENT_CALLS}
                    )
                name = replica_name(service.name, replica)
                await self._start_process(name, argv, service_env, port)
        await self._start_edge(upstreams, balancers)
        self._write_status()
        await self._until_stopped(self._wait_ready(list(self.processes.keys() - {"edge"})))
        for process in self.processes.values():
            process.restart = True
        self.ready = True
        self._write_status()

    async def _start_edge(self, upstreams: dict[str, list[str]], balancers: dict[str, int]) -> None:
        """Caddy on PORT, its configuration generated from infra/routes.json."""
        state = self.data.edge_dir
        config = write_config(state, RoutingTable.load(), upstreams, self.port, balancers)
        argv = [caddy_binary(), "run", "--config", str(config)]
        await self._start_process("edge", argv, caddy_environment(state), self.port)

    # -- infrastructure ----------------------------------------------------------------------

    async def _start_postgres(self) -> None:
        postgres = EmbeddedPostgres(self.data.checked_postgres_dir(self.log), durable=True)
        try:
            await self._start_server("PostgreSQL", postgres, postgres.data_dir)
        except PermissionError as exc:  # raised before the server process is started
            relocated = self.data.relocate_postgres(self.log)
            self.log(
                f"note: {exc}. (As root, PostgreSQL runs as that unprivileged user: it refuses "
                f"to run as root.) Its data lives in {relocated} instead; `reset` deletes it too."
            )
            postgres = EmbeddedPostgres(relocated, durable=True)
            await self._start_server("PostgreSQL", postgres, postgres.data_dir)
        self.postgres = postgres
        self.log(
            f"PostgreSQL on 127.0.0.1:{postgres.port} (data and server.log in {postgres.data_dir})"
        )

    async def _start_nats(self) -> None:
        nats = EmbeddedNats(self.data.nats_dir, config=self.data.nats_config())
        await self._start_server("NATS", nats, nats.store_dir)
        self.nats = nats
        self.log(f"NATS JetStream on {nats.url} (store and server.log in {nats.store_dir})")

    @staticmethod
    async def _start_server(
        name: str, server: EmbeddedPostgres | EmbeddedNats, folder: Path
    ) -> None:
        try:
            await asyncio.to_thread(server.start)
        except PermissionError:
            raise
        except Exception as exc:
            await asyncio.to_thread(server.stop)  # it may have started, just not in time
            raise StartupError(
                f"{name} did not start ({exc}); see {folder / 'server.log'}"
            ) from exc

    async def _create_databases(self, names: list[str]) -> None:
        assert self.postgres is not None
        conn = await asyncpg.connect(with_driver(self.postgres.url, driver=PLAIN))
        try:
            existing = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
            for name in names:
                if name not in existing:
                    await conn.execute(f'CREATE DATABASE "{name}"')
                    self.log(f"created database {name}")
        finally:
            await conn.close()

    async def _watch_infrastructure(self) -> None:
        """Until a stop is requested, bring PostgreSQL or NATS back should either die."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            for name, server in (("postgres", self.postgres), ("nats", self.nats)):
                process = server.process if server else None
                if self._stop.is_set() or server is None or process is None:
                    continue
                if (code := process.poll()) is not None:
                    self.log(f"{name} {describe_exit(code)}; restarting it")
                    server.process = None
                    await self._restart_server(name, server)
                    self._write_status()

    async def _restart_server(self, name: str, server: EmbeddedPostgres | EmbeddedNats) -> None:
        """Start ``server`` again, retrying with a growing pause; PlatformError if it won't."""
        folder = server.data_dir if isinstance(server, EmbeddedPostgres) else server.store_dir
        delay = self.infra_first_retry_delay
        for attempt in range(1, self.infra_restart_attempts + 1):
            try:
                await asyncio.to_thread(server.start)
                if attempt > 1:
                    self.log(f"{name} is back (attempt {attempt})")
                return
            except Exception as exc:
                with contextlib.suppress(Exception):  # it may have started, just not in time
                    await asyncio.to_thread(server.stop)
                server.process = None
                self.log(
                    f"{name} did not restart ({type(exc).__name__}: {exc}; attempt {attempt} of "
                    f"{self.infra_restart_attempts}; see {folder / 'server.log'})"
                )
            if attempt < self.infra_restart_attempts:
                self.log(f"trying {name} again in {delay:g}s")
                await self._until_stopped(asyncio.sleep(delay))
                delay *= 2
        raise PlatformError(
            f"{name} died and could not be restarted after {self.infra_restart_attempts} "
            f"attempts; stopping everything (see {folder / 'server.log'})"
        )

    # -- services ----------------------------------------------------------------------------

    def _service_env(self, jwt_key: str) -> dict[str, str]:
        assert self.postgres is not None and self.nats is not None
        env = dict(os.environ)
        env.pop("PORT", None)  # the edge's; a service's port is its --port
        env.pop("REPLICAS", None)  # the launcher's
        env.pop("DATABASE_URL", None)  # each service gets its own below
        for name in ("NATS_USER", "NATS_PASSWORD"):  # likewise its own NATS user
            env.pop(name, None)
        env.setdefault("LOG_JSON", "false")  # lines for people; JSON is for the cluster
        env |= {
            "ENVIRONMENT": "development",
            "NATS_URL": self.nats.url,
            "JWT_KEY": jwt_key,
            "COOKIE_SECURE": "false",  # plain http on localhost
            "PYTHONUNBUFFERED": "1",
        }
        return env

    def _nats_credentials(self, service: str) -> dict[str, str]:
        """A backend service connects to NATS as its own user (see messaging.permissions)."""
        if service not in BACKEND_SERVICES:
            return {}
        return {"NATS_USER": service, "NATS_PASSWORD": self.data.nats_passwords()[service]}

    async def _start_process(
        self, name: str, argv: list[str], env: dict[str, str], port: int
    ) -> None:
        # Not restarted until the platform is up: a service failing at start-up (a migration
        # that fails, a bad setting) stops the start with its error instead of looping.
        process = ManagedProcess(
            name, argv, env, self.output, restart=False, port=port, on_restart=self._restarted
        )
        self.processes[name] = process
        await process.start()

    def _restarted(self, process: ManagedProcess) -> None:
        self._write_status()
        if process.name != "edge":
            task = asyncio.create_task(self._announce_ready_again(process.name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _announce_ready_again(self, name: str) -> None:
        if not await self._not_ready_in_time([name]):
            self.log(f"{name} is ready again")

    async def _wait_ready(self, names: list[str]) -> None:
        await self._wait_services_ready(names)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not await self._edge_listening():
            if time.monotonic() > deadline:
                raise StartupError("the edge did not start (see its lines above)")
            await asyncio.sleep(0.1)

    async def _wait_services_ready(self, names: list[str]) -> None:
        pending = await self._not_ready_in_time(names, self._fail_if_one_exited)
        if pending:
            raise StartupError(
                f"not ready after {READY_TIMEOUT_SECONDS:g}s: {', '.join(pending)} "
                "(see their lines above)"
            )

    async def _not_ready_in_time(
        self, names: list[str], check: Callable[[], None] | None = None
    ) -> list[str]:
        """Poll the services' ``/readyz``; those not ready within the timeout (or a stop)."""
        pending = [*names]
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        async with outbound_client(timeout=2) as client:
            while pending and time.monotonic() < deadline and not self._stop.is_set():
                if check is not None:
                    check()
                pending = [n for n in pending if not await self._is_ready(client, n)]
                if pending:
                    await asyncio.sleep(0.2)
        return pending

    def _fail_if_one_exited(self) -> None:
        for name, process in self.processes.items():
            if process.process is not None and process.process.returncode is not None:
                code = describe_exit(process.process.returncode)
                raise StartupError(f"{name} failed to start ({code}); see its lines above")

    async def _is_ready(self, client: httpx.AsyncClient, name: str) -> bool:
        port = self.processes[name].port
        try:
            response = await client.get(f"http://127.0.0.1:{port}/readyz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _edge_listening(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    # -- status and shutdown -----------------------------------------------------------------

    def _write_status(self) -> None:
        processes: dict[str, Any] = {}
        for name, server in (("postgres", self.postgres), ("nats", self.nats)):
            if server is not None and server.process is not None:
                processes[name] = {
                    "pid": server.process.pid,
                    "startTicks": process_start_ticks(server.process.pid),
                    "port": server.port,
                }
        for name, process in self.processes.items():
            if process.pid is not None:
                processes[name] = {
                    "pid": process.pid,
                    "startTicks": process.start_ticks,
                    "port": process.port,
                    "restarts": process.restarts,
                }
        self.data.write_status(
            {
                "pid": os.getpid(),
                "url": self.url,
                "ready": self.ready,
                "replicas": self.replicas,
                "dataDir": str(self.data.path),
                "postgresDataDir": str(self.postgres.data_dir) if self.postgres else None,
                "processes": processes,
            }
        )

    async def _shutdown(self) -> None:
        self._stop.set()
        for task in list(self._background):
            task.cancel()
        # The edge and every service at once: each finishes its requests in flight.
        await asyncio.gather(*(p.stop(STOP_TIMEOUT_SECONDS) for p in self.processes.values()))
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        self.data.clear_status()
        if self.processes or self.postgres:
            self.log("stopped")
