"""Benchmark: one service's request path at saturation, beside the bare app, in one run.

Starts its own PostgreSQL (durable, as local mode runs it) and NATS, then one service process
at a time as ``python -m <service> serve`` runs it (its relay and consumer included), and the
bare app (``bare_app.py``: only the JWT-cookie check and the pydantic body). The same load
generator drives each at saturation, in alternating rounds so that a change in the machine's
load hits both sides alike:

- ``POST /api/orders``: the orders process beside the bare app's ``/api/orders`` (orders'
  ticket replica is filled straight into its database first);
- ``POST /api/tickets``: the tickets process beside the bare app's ``/api/tickets``.

It prints requests/s and p99 of each, the ratio of ours to bare, and the service's RSS idle
(before the first round) and at its peak under load. The whole platform is measured by
``run.py``; this is the quick check of a change to the request path.

    .venv/bin/python bench/request_path.py --seconds 8 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import psutil
from event_pipeline import temporary_folder
from loadgen import Answer, Request, closed_loop, connections, percentile, rate
from platform_under_test import _tree_cpu as tree_cpu
from run import User, close, created, order, start_bare_app

from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port, wait_for_port

MIB = 1024 * 1024
# More tickets than orders can take in a round at any plausible speed; the round ends early
# (and says so) if they run out.
TICKETS_PER_ROUND = 20000


@dataclass
class Side:
    """One side of the comparison: its answers per round."""

    name: str
    rounds: list[list[Answer]] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the server process's, across every round
    db_cpu_seconds: float = 0.0  # PostgreSQL's (every backend), across every round

    def cpu_ms(self, seconds: float) -> float:
        return 1000 * seconds / max(1, sum(len(created(r)) for r in self.rounds))

    @property
    def rates(self) -> list[float]:
        return [rate(created(answers)) for answers in self.rounds]

    @property
    def p99_ms(self) -> float:
        return 1000 * percentile([a.latency for r in self.rounds for a in created(r)], 99)

    @property
    def refused(self) -> int:
        return sum(len(r) - len(created(r)) for r in self.rounds)


@dataclass
class Comparison:
    route: str
    ours: Side
    bare: Side
    idle_rss: int = 0
    peak_rss: int = 0

    def lines(self) -> list[str]:
        ours, bare = statistics.median(self.ours.rates), statistics.median(self.bare.rates)
        ours_cpu = self.ours.cpu_ms(self.ours.cpu_seconds)
        bare_cpu = self.bare.cpu_ms(self.bare.cpu_seconds)
        pairs = zip(self.ours.rates, self.bare.rates, strict=True)
        rounds = " ".join(f"{o:.0f}/{b:.0f}" for o, b in pairs)
        lines = [
            f"{self.route}",
            f"  {self.ours.name:<10} {ours:8.1f} req/s  p99 {self.ours.p99_ms:7.1f} ms",
            f"  {'bare app':<10} {bare:8.1f} req/s  p99 {self.bare.p99_ms:7.1f} ms",
            f"  ours / bare: {ours / bare:.0%} (median of rounds; each round ours/bare: {rounds})",
            f"  CPU per request: {self.ours.name} {ours_cpu:.2f} ms + PostgreSQL "
            f"{self.ours.cpu_ms(self.ours.db_cpu_seconds):.2f} ms, bare app {bare_cpu:.2f} ms: "
            f"bare / ours {bare_cpu / ours_cpu:.0%} (about the ratio of rates with a CPU each; "
            "the process's background work, its relay's included, counts in it)",
            f"  {self.ours.name} RSS: idle {self.idle_rss / MIB:.1f} MiB, "
            f"peak under load {self.peak_rss / MIB:.1f} MiB",
        ]
        for side in (self.ours, self.bare):
            if side.refused:
                lines.append(f"  warning: {side.name}: {side.refused} answers other than 201")
        return lines


class Servers:
    """PostgreSQL and NATS for the run, and one service process at a time."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key
        self.postgres = EmbeddedPostgres(folder / "pg", durable=True)
        self.nats = EmbeddedNats(folder / "nats")

    def __enter__(self) -> Servers:
        self.postgres.start()
        self.nats.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.nats.stop()
        self.postgres.stop()

    async def database(self, service: str) -> str:
        conn = await asyncpg.connect(with_driver(self.postgres.url, driver=PLAIN))
        try:
            await conn.execute(f'CREATE DATABASE "{service}"')
        finally:
            await conn.close()
        return self.postgres.database_url(service)

    def spawn(self, name: str, database_url: str, port: int) -> subprocess.Popen[bytes]:
        """``python -m <name> serve --migrate``, answering once it listens."""
        env = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL", "PORT")
        } | {"DATABASE_URL": database_url, "NATS_URL": self.nats.url, "JWT_KEY": self.key}
        command = [sys.executable, "-m", name, "serve", "--migrate", "--host", "127.0.0.1"]
        with (self.folder / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(port, 120, process)
        return process

    @contextlib.asynccontextmanager
    async def service(self, name: str, database_url: str) -> AsyncIterator[tuple[str, int]]:
        """The service running; its URL and pid."""
        port = free_port()
        process = await asyncio.to_thread(self.spawn, name, database_url, port)
        try:
            yield f"http://127.0.0.1:{port}", process.pid
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 60)


async def fill_orders_replica(database_url: str, seller: uuid.UUID, count: int) -> list[str]:
    """``count`` tickets in orders' replica, as ticket.created would have put them there."""
    ids = [uuid.uuid4() for _ in range(count)]
    conn = await asyncpg.connect(with_driver(database_url, driver=PLAIN))
    try:
        await conn.copy_records_to_table(
            "tickets",
            records=[(i, "Bench", Decimal("25.50"), seller, 0) for i in ids],
            columns=["id", "title", "price", "user_id", "version"],
        )
    finally:
        await conn.close()
    return [str(i) for i in ids]


async def rounds(
    comparison: Comparison,
    ours_url: str,
    bare_url: str,
    pids: tuple[int, int, int],  # ours, the bare app, PostgreSQL
    requests: Callable[[bool], Iterator[Request]],
    plan: argparse.Namespace,
) -> None:
    pid, bare_pid, postgres_pid = pids
    process = psutil.Process(pid)
    comparison.idle_rss = process.memory_info().rss
    for _ in range(plan.rounds):
        sides = (
            (comparison.bare, bare_url, bare_pid, False),
            (comparison.ours, ours_url, pid, True),
        )
        for side, url, server, ours in sides:
            pool = connections(url, plan.connections)
            stop = asyncio.Event()
            watcher = asyncio.create_task(peak_rss(process, comparison, stop))
            cpu, db_cpu = tree_cpu(server, False), tree_cpu(postgres_pid, True)
            side.rounds.append(await closed_loop(pool, requests(ours), plan.seconds))
            side.cpu_seconds += tree_cpu(server, False) - cpu
            side.db_cpu_seconds += tree_cpu(postgres_pid, True) - db_cpu
            stop.set()
            await watcher
            close(pool)


async def peak_rss(process: psutil.Process, comparison: Comparison, stop: asyncio.Event) -> None:
    while not stop.is_set():
        comparison.peak_rss = max(comparison.peak_rss, process.memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def ticket_request(buyer: User, i: int) -> Request:
    return Request(
        "POST",
        "/api/tickets",
        {"title": f"Bench {i}", "price": "25.50"},
        {"Cookie": buyer.cookie},
    )


async def measure(plan: argparse.Namespace) -> list[Comparison]:
    key = secrets.token_hex(32)
    seller = User.mint(key)
    buyers = [User.mint(key) for _ in range(plan.connections)]
    folder = temporary_folder()
    bare_port = free_port()
    bare = await asyncio.to_thread(start_bare_app, bare_port, key)
    bare_url = f"http://127.0.0.1:{bare_port}"
    results = []
    try:
        with Servers(folder, key) as servers:
            assert servers.postgres.process is not None
            postgres_pid = servers.postgres.process.pid
            if "orders" in plan.routes:
                url = await servers.database("orders")
                async with servers.service("orders", url) as (orders_url, pid):
                    count = TICKETS_PER_ROUND * plan.rounds
                    pool = iter(await fill_orders_replica(url, uuid.UUID(seller.id), count))

                    def orders(ours: bool) -> Iterator[Request]:
                        if not ours:  # the bare app stops before looking anything up
                            while True:
                                yield order(str(uuid.uuid4()), buyers[0])
                        for i, ticket in enumerate(pool):
                            yield order(ticket, buyers[i % len(buyers)])

                    comparison = Comparison("POST /api/orders", Side("orders"), Side("bare"))
                    pids = (pid, bare.pid, postgres_pid)
                    await rounds(comparison, orders_url, bare_url, pids, orders, plan)
                    results.append(comparison)
            if "tickets" in plan.routes:
                url = await servers.database("tickets")
                async with servers.service("tickets", url) as (tickets_url, pid):

                    def tickets(ours: bool) -> Iterator[Request]:
                        return (ticket_request(seller, i) for i in itertools.count())

                    comparison = Comparison("POST /api/tickets", Side("tickets"), Side("bare"))
                    pids = (pid, bare.pid, postgres_pid)
                    await rounds(comparison, tickets_url, bare_url, pids, tickets, plan)
                    results.append(comparison)
    finally:
        bare.terminate()
        bare.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--routes", nargs="+", choices=("orders", "tickets"), default=["orders", "tickets"]
    )
    plan = parser.parse_args()
    load = os.getloadavg()
    results = asyncio.run(measure(plan))
    print(f"load average at the start {load[0]:.1f}; {plan.connections} connections")
    for comparison in results:
        print("\n".join(comparison.lines()))


if __name__ == "__main__":
    main()
