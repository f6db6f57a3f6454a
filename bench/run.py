"""``make bench``: every performance target of the platform, measured beside its reference.

Starts the platform as ``make up`` does (on a temporary folder and port), and in the same run a
bare FastAPI app (the reference for a request) and a bare JetStream publisher (the reference for
the relay), then drives them all with its own load generator, on loopback only:

1. ``POST /api/tickets`` through the edge, 16 at a time (making the tickets the orders need);
2. ``POST /api/orders`` at saturation: the bare app, the orders process directly, the edge;
3. a burst of purchases until each has propagated, with the CPU every process spent on it;
4. a sweep of steady offered rates, up to the first the platform cannot keep up with;
5. a flash sale: many buyers at once on few tickets;
6. expiry: many orders all expiring at one whole second, placed through orders' own code;
7. the relay and the consumer runner alone, beside bare JetStream publishing;
8. the burst's purchases again, through the same flow wired bare (``bare_purchase.py``): the
   reference for the CPU per purchase.

A purchase has propagated when tickets publishes the ``ticket.updated`` that carries its order
(watched on NATS); a phase ends when every consumer has caught up, so none leaks into the next.
Memory is sampled throughout. It prints one table and writes it, the raw figures and the plots
to ``docs/bench/``. Every phase is bounded in count and time.

    .venv/bin/python bench/run.py            # the full run (several minutes)
    .venv/bin/python bench/run.py --quick    # small counts: checks the instrument, not speed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform as host
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bare_purchase
import event_pipeline
import jwt
import report
import uvloop
from loadgen import (
    Answer,
    Connection,
    Request,
    all_at_once,
    closed_loop,
    connections,
    open_loop,
    percentile,
    rate,
)
from platform_under_test import CpuSpan, EventWatcher, Meter, Platform
from progress import Progress
from report import Row

from orders import service
from orders.schemas import OrderIn
from ticketing_common.clock import utcnow
from ticketing_common.database_url import with_driver
from ticketing_common.db import make_engine, make_sessionmaker
from ticketing_common.embedded import free_port, wait_for_port
from ticketing_common.errors import AppError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "bench"
MIB = 1024 * 1024
LONG_EXPIRY = "3600"  # no order placed by the main phases expires during the run
# The expiry phase's orders: so many placed at a time, each in its own unit of work, and all
# placed and scheduled at least so long before they expire (or the figure means nothing).
EXPIRY_PLACING_CONCURRENCY = 16
EXPIRY_MARGIN_SECONDS = 2.0
# For the progress bar only: how fast things went before any optimisation.
EXPECTED_RATE = 150.0
PLATFORM_START_SECONDS = 30.0
BARE_START_SECONDS = 15.0
SUSTAINED_TARGET = 500.0  # purchases a second
# A steady rate is kept up with when the last purchase has propagated within this long after
# the last order was sent: no backlog is piling up.
BACKLOG_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class Plan:
    """How much of everything: the full run, or ``quick()`` to check the instrument."""

    saturation_seconds: float = 10.0
    saturation_pool: int = 2000  # tickets per saturation phase: it ends early if they run out
    connections: int = 32
    ticket_connections: int = 16
    burst_orders: int = 768
    burst_seconds: float = 5.0
    sweep_rates: tuple[float, ...] = (25, 50, 100, 200, 350, 500, 750, 1000)
    sweep_seconds: float = 5.0
    open_loop_connections: int = 256
    flash_buyers: int = 1000
    flash_tickets: int = 100
    expiry_orders: int = 1000
    expiry_seconds: int = 20
    pipeline_events: int = 5000
    propagation_timeout: float = 120.0

    def expected_seconds(self) -> float:
        """Roughly how long the run takes (before any optimisation): for the progress bar."""
        orders = (
            2 * self.saturation_pool
            + self.burst_orders
            + sum(self.sweep_rates) * self.sweep_seconds
            + self.flash_tickets
        )
        return (
            PLATFORM_START_SECONDS
            + 3 * self.saturation_seconds
            + 2 * orders / EXPECTED_RATE  # each made as a ticket, then ordered
            + self.expiry_orders / EXPECTED_RATE  # made as tickets; ordered without HTTP
            + self.expiry_seconds
            + 3 * self.pipeline_events / EXPECTED_RATE
            + BARE_START_SECONDS
            + self.burst_seconds
            + self.saturation_seconds
            + self.sweep_seconds
        )

    @classmethod
    def quick(cls) -> Plan:
        # Every phase, each with the fewest requests that still give every figure (a sweep of
        # two steps, so the throughput plot has a line): the platform's start is most of it.
        return replace(
            cls(),
            saturation_seconds=1.0,
            saturation_pool=64,
            burst_orders=32,
            burst_seconds=0.5,
            sweep_rates=(20, 40),
            sweep_seconds=1.0,
            flash_buyers=50,
            flash_tickets=5,
            expiry_orders=20,
            expiry_seconds=5,
            pipeline_events=150,
            propagation_timeout=60.0,
        )


@dataclass(frozen=True)
class User:
    id: str
    cookie: str  # the header value: a session minted with the platform's JWT_KEY

    @classmethod
    def mint(cls, key: str) -> User:
        user_id, now = str(uuid.uuid4()), datetime.now(UTC)
        claims = {
            "sub": user_id,
            "email": f"{user_id[:8]}@bench.example",
            "iat": now,
            "exp": now + timedelta(hours=6),
        }
        return cls(user_id, f"session={jwt.encode(claims, key, algorithm='HS256')}")


@dataclass
class SweepStep:
    offered: float
    achieved: float
    kept_up: bool
    order_latencies: list[float]
    propagation: list[float]
    cpu_ms_per_purchase: float


@dataclass
class Results:
    """Every figure the table and plots are made of."""

    ticket_answers: list[Answer] = field(default_factory=list)
    saturation: dict[str, list[Answer]] = field(default_factory=dict)
    burst_rate: float = 0.0
    burst_offered: float = 0.0
    burst_propagation: list[float] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    sweep: list[SweepStep] = field(default_factory=list)
    flash_orders: int = 0
    flash_exact: bool = False
    flash_seconds: float = float("nan")
    expiry_lateness: list[float] = field(default_factory=list)
    expiry_busiest_second: int = 0
    # Every process's CPU from just before the first order expired until every consumer had
    # handled the cancellations, per order cancelled (in results.json, not the table).
    expiry_cpu_ms: dict[str, float] = field(default_factory=dict)
    idle_rss: dict[str, int] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    pipeline: event_pipeline.PipelineRates | None = None
    bare: bare_purchase.BareCosts | None = None  # the burst's purchases, wired bare
    failures: list[str] = field(default_factory=list)


def order(ticket_id: str, buyer: User) -> Request:
    return Request(
        "POST", "/api/orders", {"ticketId": ticket_id}, {"Cookie": buyer.cookie}, tag=ticket_id
    )


def created(answers: Sequence[Answer]) -> list[Answer]:
    return [a for a in answers if a.status == 201]


class Bench:
    def __init__(self, plan: Plan, work: Path, progress: Progress) -> None:
        self.plan = plan
        self.work = work
        self.progress = progress
        self.key = secrets.token_hex(32)
        self.platform = Platform(work / "data", work / "platform.log", self.key)
        self.seller = User.mint(self.key)
        self.buyers = [User.mint(self.key) for _ in range(plan.connections)]
        self.results = Results()
        self._watcher: EventWatcher | None = None
        self._meter: Meter | None = None

    @property
    def watcher(self) -> EventWatcher:
        assert self._watcher is not None, "the platform is not up"
        return self._watcher

    @property
    def meter(self) -> Meter:
        assert self._meter is not None, "the platform is not up"
        return self._meter

    # -- the platform ------------------------------------------------------------------------

    async def start_platform(self, expiry: str) -> None:
        await asyncio.to_thread(self.platform.start, ORDER_EXPIRATION_SECONDS=expiry)
        self._watcher = await EventWatcher.connect(self.platform)
        self._meter = Meter(self.platform.processes())
        await self.settle()

    async def stop_platform(self) -> None:
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        if self._meter is not None:
            for name, size in self._meter.peak_rss.items():
                self.results.peak_rss[name] = max(self.results.peak_rss.get(name, 0), size)
        await asyncio.to_thread(self.platform.stop)

    async def settle(self) -> None:
        """Until every consumer has caught up: no phase's events leak into the next."""
        if not await self.watcher.until_quiet(self.plan.propagation_timeout):
            self.results.failures.append("the consumers did not catch up between phases")

    @contextlib.asynccontextmanager
    async def memory_watched(self) -> Any:
        stop = asyncio.Event()
        task = asyncio.create_task(self.meter.watch_memory(stop))
        try:
            yield
        finally:
            stop.set()
            await task

    # -- tickets -----------------------------------------------------------------------------

    async def tickets(self, count: int) -> list[str]:
        """``count`` new tickets, known to orders: POST /api/tickets through the edge."""
        self.progress.start(f"making {count} tickets", count / EXPECTED_RATE)
        requests = (
            Request(
                "POST",
                "/api/tickets",
                {"title": f"Bench {i}", "price": "25.50"},
                {"Cookie": self.seller.cookie},
            )
            for i in range(count)
        )
        pool = connections(self.platform.url, self.plan.ticket_connections)
        answers = await closed_loop(pool, requests, seconds=3600.0)
        close(pool)
        self.results.ticket_answers += answers
        ids = [a.json()["id"] for a in created(answers)]
        if len(ids) < count:
            statuses = Counter(a.status for a in answers)
            raise RuntimeError(f"made {len(ids)} of {count} tickets: {dict(statuses)}")
        await self.settle()
        return ids

    def orders_for(self, ticket_ids: Sequence[str]) -> Iterator[Request]:
        return (order(t, self.buyers[i % len(self.buyers)]) for i, t in enumerate(ticket_ids))

    async def propagated(self, answers: Sequence[Answer]) -> list[float]:
        """Wait for each order's ticket to show it; seconds from each 201 to its ticket.updated."""
        orders = created(answers)
        tickets = [a.request.tag for a in orders]
        reserved = self.watcher.reserved
        if not await self.watcher.until(reserved, tickets, self.plan.propagation_timeout):
            missing = len(set(tickets) - reserved.keys())
            self.results.failures.append(f"{missing} reservations never reached tickets")
        return [reserved[a.request.tag][1] - a.done for a in orders if a.request.tag in reserved]

    # -- phases ------------------------------------------------------------------------------

    async def saturation(self, name: str, base_url: str, requests: Iterator[Request]) -> None:
        pool = connections(base_url, self.plan.connections)
        seconds = self.plan.saturation_seconds
        answers = await closed_loop(pool, requests, seconds)
        close(pool)
        self.results.saturation[name] = answers
        self.record_refusals(name, answers)

    async def bare_saturation(self) -> None:
        port = free_port()
        app = await asyncio.to_thread(start_bare_app, port, self.key)
        try:
            # Any ticket id will do: the bare app stops before looking anything up.
            requests = (order(str(uuid.uuid4()), self.buyers[0]) for _ in itertools.count())
            await self.saturation("bare app", f"http://127.0.0.1:{port}", requests)
        finally:
            app.terminate()
            app.wait()

    async def order_saturation(self, name: str, base_url: str) -> None:
        tickets = await self.tickets(self.plan.saturation_pool)
        self.progress.start(f"POST /api/orders at saturation, {name}", self.plan.saturation_seconds)
        await self.saturation(name, base_url, self.orders_for(tickets))
        await self.propagated(self.results.saturation[name])
        await self.settle()

    async def burst(self) -> None:
        plan = self.plan
        tickets = await self.tickets(plan.burst_orders)
        self.progress.start(
            f"{plan.burst_orders} purchases in {plan.burst_seconds:g}s", plan.burst_seconds
        )
        offered = plan.burst_orders / plan.burst_seconds
        span = CpuSpan(self.meter.cpu())
        answers, propagation, elapsed = await self.steady(tickets, offered)
        await self.settle()
        span.after = self.meter.cpu()
        purchases = len(propagation)
        self.results.burst_offered = offered
        self.results.burst_rate = purchases / elapsed if elapsed else 0.0
        self.results.burst_propagation = propagation
        self.results.cpu_ms = {
            name: 1000 * seconds / max(purchases, 1) for name, seconds in span.by_process.items()
        }
        self.record_refusals("burst", answers)

    async def steady(
        self, tickets: Sequence[str], offered: float
    ) -> tuple[list[Answer], list[float], float]:
        """Orders at ``offered`` per second until each propagated; answers, propagation, span."""
        pool = connections(self.platform.service_url("orders"), self.plan.open_loop_connections)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await open_loop(pool, list(self.orders_for(tickets)), offered)
        close(pool)
        propagation = await self.propagated(answers)
        reserved = [self.watcher.reserved[t][1] for t in tickets if t in self.watcher.reserved]
        return answers, propagation, (max(reserved) - started) if reserved else 0.0

    async def sweep(self) -> None:
        for offered in self.plan.sweep_rates:
            tickets = await self.tickets(round(offered * self.plan.sweep_seconds))
            self.progress.start(f"steady {offered:g} purchases/s", self.plan.sweep_seconds)
            span = CpuSpan(self.meter.cpu())
            answers, propagation, elapsed = await self.steady(tickets, offered)
            await self.settle()
            span.after = self.meter.cpu()
            achieved = len(propagation) / elapsed if elapsed else 0.0
            step = SweepStep(
                offered=offered,
                achieved=achieved,
                kept_up=len(propagation) == len(tickets)
                and elapsed <= len(tickets) / offered + BACKLOG_SLACK_SECONDS,
                order_latencies=[a.latency for a in created(answers)],
                propagation=propagation,
                cpu_ms_per_purchase=1000 * sum(span.by_process.values()) / max(len(tickets), 1),
            )
            self.results.sweep.append(step)
            self.record_refusals(f"steady {offered:g}/s", answers)
            if not step.kept_up:
                break  # every higher rate would only pile up a backlog

    async def flash_sale(self) -> None:
        plan = self.plan
        tickets = await self.tickets(plan.flash_tickets)
        self.progress.start(f"flash sale: {plan.flash_buyers} buyers", 2.0)
        buyers = [User.mint(self.key) for _ in range(plan.flash_buyers)]
        requests = [order(tickets[i % len(tickets)], b) for i, b in enumerate(buyers)]
        started = asyncio.get_running_loop().time()
        answers = await all_at_once(self.platform.url, requests)
        wins = Counter(a.request.tag for a in created(answers))
        await self.propagated(answers)
        await self.settle()
        reserved = [self.watcher.reserved[t][1] for t in tickets if t in self.watcher.reserved]
        self.results.flash_orders = sum(wins.values())
        self.results.flash_exact = len(reserved) == len(tickets) and set(wins.values()) == {1}
        self.results.flash_exact &= len(wins) == len(tickets)
        if len(reserved) == len(tickets):
            self.results.flash_seconds = max(reserved) - started
        refused = Counter(a.status for a in answers if a.status != 201)
        if set(refused) - {400}:
            self.results.failures.append(f"flash sale: unexpected answers {dict(refused)}")

    async def expiry(self) -> None:
        """Many orders all expiring at one whole second, left to expire; seconds late each.

        The orders are placed through orders' own service code, straight on its database, all
        with the same ``expiresAt``: no client can place 1,000 orders within one second on a
        2-vCPU machine (orders takes about 300/s), and the target is about the timers firing
        together, not about placing. From the commit on, all goes as for an order placed over
        HTTP: orders relays each ``order.created``, expiration schedules its timer.
        """
        plan = self.plan
        tickets = await self.tickets(plan.expiry_orders)
        self.progress.start(
            f"expiry: {len(tickets)} orders expiring at one instant", plan.expiry_seconds + 1.0
        )
        # A whole second, far enough ahead for the placing and the scheduling to finish first.
        soon = utcnow() + timedelta(seconds=plan.expiry_seconds)
        expires_at = datetime.fromtimestamp(math.ceil(soon.timestamp()), UTC)
        expires = await self.place_orders(tickets, expires_at)
        await self.settle()  # the orders' own events handled: what follows is the expiries'
        ahead = expires_at.timestamp() - time.time()
        if ahead < EXPIRY_MARGIN_SECONDS:
            self.results.failures.append(
                f"expiry: the orders were placed and scheduled only {ahead:.1f} s before they "
                f"expired (less than {EXPIRY_MARGIN_SECONDS:g} s): its row means nothing"
            )
        await asyncio.sleep(max(0.0, ahead - 0.5))
        span = CpuSpan(self.meter.cpu())
        timeout = plan.expiry_seconds + plan.propagation_timeout
        if not await self.watcher.until(self.watcher.cancelled, expires, timeout):
            self.results.failures.append("some orders were never cancelled after expiring")
        await self.settle()  # tickets released, payments told, orders' replica updated
        span.after = self.meter.cpu()
        cancelled = self.watcher.cancelled
        self.results.expiry_cpu_ms = {
            name: 1000 * seconds / max(len(expires), 1) for name, seconds in span.by_process.items()
        }
        self.results.expiry_lateness = [
            cancelled[o] - at.timestamp() for o, at in expires.items() if o in cancelled
        ]
        per_second = Counter(int(at.timestamp()) for at in expires.values())
        self.results.expiry_busiest_second = max(per_second.values(), default=0)

    async def place_orders(
        self, tickets: Sequence[str], expires_at: datetime
    ) -> dict[str, datetime]:
        """Each ticket ordered by one of the buyers until ``expires_at``, through
        ``orders.service`` on orders' database, each order in a unit of work of its own, a few
        at a time; each order's ``expiresAt`` as the service answered, by order id."""
        postgres_port = self.platform.status["processes"]["postgres"]["port"]
        url = with_driver(f"postgresql://postgres@127.0.0.1:{postgres_port}/orders")
        engine = make_engine(url, pool_size=EXPIRY_PLACING_CONCURRENCY)
        sessionmaker = make_sessionmaker(engine)
        work = iter(enumerate(tickets))
        expires: dict[str, datetime] = {}
        refused: Counter[str] = Counter()

        async def place() -> None:
            for i, ticket in work:  # shared: each ticket is taken by one of the placers
                buyer = uuid.UUID(self.buyers[i % len(self.buyers)].id)
                request = OrderIn(ticket_id=uuid.UUID(ticket))
                try:
                    async with sessionmaker.begin() as session:
                        answer = await service.create_order(
                            session, buyer, request, expires_at=expires_at
                        )
                except AppError as exc:
                    refused[type(exc).__name__] += 1
                    continue
                expires[answer.body["id"]] = datetime.fromisoformat(answer.body["expiresAt"])

        try:
            await asyncio.gather(*(place() for _ in range(EXPIRY_PLACING_CONCURRENCY)))
        finally:
            await engine.dispose()
        if refused:
            self.results.failures.append(f"expiry: orders refused: {dict(refused)}")
        return expires

    async def pipeline(self) -> None:
        self.progress.start(
            "relay and consumer alone", 3 * self.plan.pipeline_events / EXPECTED_RATE
        )
        folder = event_pipeline.temporary_folder()
        self.results.pipeline = await event_pipeline.measure(self.plan.pipeline_events, 1, folder)

    async def bare_purchases(self) -> None:
        plan = self.plan
        self.progress.start(
            "the same purchases, wired bare, then its orders at saturation",
            BARE_START_SECONDS + plan.burst_seconds + plan.sweep_seconds + plan.saturation_seconds,
        )
        self.results.bare = await bare_purchase.measure(
            plan.burst_orders,
            plan.burst_orders / plan.burst_seconds,
            self.key,
            lambda ticket, i: order(ticket, self.buyers[i % len(self.buyers)]),
            event_pipeline.temporary_folder(),
            faster=(SUSTAINED_TARGET, round(SUSTAINED_TARGET * plan.sweep_seconds)),
            saturation=bare_purchase.Saturation(
                plan.saturation_seconds, plan.connections, plan.saturation_pool
            ),
        )

    # -- the run -----------------------------------------------------------------------------

    async def measured(self) -> Results:
        redraw = asyncio.create_task(self.progress.redraw())
        try:
            return await self.run()
        finally:
            redraw.cancel()

    async def run(self) -> Results:
        plan = self.plan
        self.progress.start("starting the platform (as make up does)", PLATFORM_START_SECONDS)
        await self.start_platform(LONG_EXPIRY)
        try:
            self.results.idle_rss = self.meter.rss()
            async with self.memory_watched():
                self.progress.start(
                    "POST /api/orders at saturation, bare app", plan.saturation_seconds
                )
                await self.bare_saturation()
                await self.order_saturation("direct", self.platform.service_url("orders"))
                await self.order_saturation("through the edge", self.platform.url)
                await self.burst()
                await self.sweep()
                await self.flash_sale()
                await self.expiry()
        finally:
            await self.stop_platform()
            await asyncio.to_thread(self.platform.wipe)
        await self.pipeline()
        await self.bare_purchases()
        return self.results

    def record_refusals(self, phase: str, answers: Sequence[Answer]) -> None:
        refused = Counter(a.status for a in answers if a.status != 201)
        if refused:
            self.results.failures.append(f"{phase}: answers other than 201: {dict(refused)}")


def start_bare_app(port: int, jwt_key: str) -> subprocess.Popen[bytes]:
    app = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "bare_app.py"), "--port", str(port)],
        env=os.environ | {"JWT_KEY": jwt_key},
    )
    wait_for_port(port, 60, app)
    return app


def close(pool: Sequence[Connection]) -> None:
    for connection in pool:
        connection.close()


# -- the answer ------------------------------------------------------------------------------


def p99_ms(values: Sequence[float]) -> float:
    return 1000 * percentile(values, 99)


def p99_of(answers: Sequence[Answer]) -> float:
    return p99_ms([a.latency for a in answers])


def sustained(sweep: Sequence[SweepStep], p99_limit_ms: float) -> SweepStep | None:
    """The fastest step kept up with, propagation p99 within the limit."""
    fine = [s for s in sweep if s.kept_up and p99_ms(s.propagation) <= p99_limit_ms]
    return max(fine, key=lambda s: s.achieved, default=None)


def beside(what: str, ours: float, unit: str, reference: float, name: str) -> Row:
    """A figure for context, beside what it compares with (no target of its own)."""
    return Row(what, ours, unit, reference, name, "-", None)


def against(what: str, ours: float, unit: str, target: float, text: str, met: bool) -> Row:
    """A figure against the issue's target (nothing to measure it beside)."""
    return Row(what, ours, unit, target, "target", text, met)


def table_rows(results: Results) -> list[Row]:
    bare, direct, edge = (
        created(results.saturation.get(k, [])) for k in ("bare app", "direct", "through the edge")
    )
    at_200 = next((s for s in results.sweep if s.offered == 200), None)
    best = sustained(results.sweep, 100.0)
    fastest = max((s for s in results.sweep if s.kept_up), key=lambda s: s.achieved, default=None)
    cpu = sum(results.cpu_ms.values())
    wired = results.bare
    bare_cpu = sum(wired.cpu_ms.values()) if wired else math.nan
    wired_bare = "the same flow wired bare"
    wired_orders = created(wired.saturation) if wired else []
    expiry_p99 = percentile(results.expiry_lateness, 99)
    idle = max(results.idle_rss.values(), default=0) / MIB
    peak = max(results.peak_rss.values(), default=0) / MIB
    orders_at = "`POST /api/orders` at saturation"

    def at_200_p99(latencies: str, limit: float) -> Row:
        p99 = p99_ms(getattr(at_200, latencies)) if at_200 else math.nan
        text = f"≤ {limit:g} ms" + ("" if at_200 else " (200/s not reached)")
        met = at_200 is not None and at_200.kept_up and p99 <= limit
        what = "propagation" if latencies == "propagation" else "`POST /api/orders`"
        return against(f"at a steady 200/s: {what} p99", p99, "ms", limit, text, met)

    rows = [
        Row(
            f"{orders_at}, orders process directly",
            rate(direct),
            "req/s",
            rate(bare),
            "bare app",
            "≥ 35 % of the bare app",
            rate(direct) >= 0.35 * rate(bare),
        ),
        Row(
            f"{orders_at}, through the edge",
            rate(edge),
            "req/s",
            rate(direct),
            "directly",
            "≥ 90 % of direct",
            rate(edge) >= 0.9 * rate(direct),
        ),
        beside(
            f"{orders_at}, {wired_bare}: one insert, one publish",
            rate(wired_orders),
            "req/s",
            rate(bare),
            "bare app",
        ),
        beside(f"{orders_at}, directly: p99", p99_of(direct), "ms", p99_of(bare), "bare app"),
        beside(f"{orders_at}, edge: p99", p99_of(edge), "ms", p99_of(direct), "directly"),
        Row(
            "CPU per purchase fully propagated, every process",
            cpu,
            "ms",
            bare_cpu,
            wired_bare,
            "≤ 3 ms",
            cpu <= 3.0,
        ),
        beside(
            f"CPU per purchase, {wired_bare} (no outbox, inbox, ORM, middleware or logs)",
            bare_cpu,
            "ms",
            3.0,
            "target",
        ),
        beside(
            "a burst of purchases, end to end until each propagated",
            results.burst_rate,
            "purchases/s",
            results.burst_offered,
            "offered",
        ),
        beside(
            "reservation reaching tickets in that burst: p99",
            p99_ms(results.burst_propagation),
            "ms",
            p99_ms(wired.burst.propagation) if wired else math.nan,
            wired_bare,
        ),
        against(
            "sustained purchases end to end, propagation p99 ≤ 100 ms",
            best.achieved if best else 0.0,
            "purchases/s",
            SUSTAINED_TARGET,
            f"≥ {SUSTAINED_TARGET:g}/s",
            best is not None and best.achieved >= SUSTAINED_TARGET,
        ),
    ]
    if fastest is not None:
        rows.append(
            beside(
                f"fastest steady rate kept up with ({fastest.offered:g}/s offered)",
                fastest.achieved,
                "purchases/s",
                SUSTAINED_TARGET,
                "target",
            )
        )
    if wired is not None and wired.faster is not None:
        rows += [
            beside(
                f"{wired_bare}, {wired.faster.offered:g}/s offered",
                wired.faster.achieved,
                "purchases/s",
                wired.faster.offered,
                "offered",
            ),
            beside(
                f"{wired_bare}, {wired.faster.offered:g}/s offered: propagation p99",
                p99_ms(wired.faster.propagation),
                "ms",
                100.0,
                "the sustained target's limit",
            ),
        ]
    rows += [at_200_p99("propagation", 25.0), at_200_p99("order_latencies", 30.0)]
    if (pipe := results.pipeline) is not None:
        rows += [
            Row(
                "relay: outbox to JetStream, one process",
                pipe.relay.per_second,
                "events/s",
                pipe.bare_publish.per_second,
                "bare JetStream publishing",
                "≥ 5,000/s",
                pipe.relay.per_second >= 5000,
            ),
            Row(
                "consumer: handler + inbox row, one process",
                pipe.consume.per_second,
                "events/s",
                pipe.bare_publish.per_second,
                "bare JetStream publishing",
                "≥ 5,000/s",
                pipe.consume.per_second >= 5000,
            ),
        ]
    rows += [
        against(
            f"flash sale: {results.flash_orders} orders won, all propagated in",
            results.flash_seconds,
            "s",
            2.0,
            "exactly one order per ticket, ≤ 2 s",
            results.flash_exact and results.flash_seconds <= 2.0,
        ),
        against(
            f"expiry: {len(results.expiry_lateness)} orders expiring at one instant ("
            f"{results.expiry_busiest_second} in the busiest second), cancelled after "
            "expiresAt: p99",
            expiry_p99,
            "s",
            1.0,
            "≤ 1 s",
            expiry_p99 <= 1.0,
        ),
        beside(
            "`POST /api/tickets` through the edge, 16 at a time",
            rate(created(results.ticket_answers)),
            "req/s",
            135.0,
            "before: 120-150/s",
        ),
        against("RSS of the largest service, idle", idle, "MiB", 80.0, "≤ 80 MiB", idle <= 80),
        against(
            "RSS of the largest service, under load", peak, "MiB", 120.0, "≤ 120 MiB", peak <= 120
        ),
    ]
    return rows


def draw(folder: Path, results: Results) -> None:
    sat = results.saturation
    steady = next((s for s in results.sweep if s.offered == 200), None) or (
        results.sweep[-1] if results.sweep else None
    )
    series = {
        f"POST /api/orders saturated, {k}": [a.latency for a in created(v)] for k, v in sat.items()
    }
    if steady is not None:
        series[f"POST /api/orders at {steady.offered:g}/s"] = steady.order_latencies
        series[f"reservation reaching tickets at {steady.offered:g}/s"] = steady.propagation
    report.plot_latency(folder / "latency.png", series)
    report.plot_throughput(
        folder / "throughput.png",
        [s.offered for s in results.sweep],
        [s.achieved for s in results.sweep],
        [p99_ms(s.propagation) for s in results.sweep],
    )
    report.plot_cpu(
        folder / "cpu.png", results.cpu_ms, 3.0, results.bare.cpu_ms if results.bare else {}
    )


QUICK_NOTE = "Quick run (small counts: it checks the instrument, not the speed)"


def conditions(plan: Plan, quick: bool, load: tuple[float, float, float]) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        host.processor() or "unknown CPU",
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{QUICK_NOTE if quick else 'Full run'} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
        f"{os.cpu_count()} x {cpu}, "
        f"{memory:.0f} GiB, Python {host.python_version()}, {host.system()} {host.release()}; "
        f"load average {load[0]:.1f} at the start. The platform runs as `make up` runs it; the "
        f"load generator ({plan.connections} connections at saturation) runs on the same machine."
    )


def raw_figures(results: Results) -> dict[str, Any]:
    return {
        "cpuMsPerPurchase": results.cpu_ms,
        "cpuMsPerExpiredOrder": results.expiry_cpu_ms,
        "sweep": [
            {
                "offered": s.offered,
                "achieved": s.achieved,
                "keptUp": s.kept_up,
                "ordersP50Ms": 1000 * percentile(s.order_latencies, 50),
                "ordersP99Ms": p99_ms(s.order_latencies),
                "propagationP50Ms": 1000 * percentile(s.propagation, 50),
                "propagationP99Ms": p99_ms(s.propagation),
                "cpuMsPerPurchase": s.cpu_ms_per_purchase,
            }
            for s in results.sweep
        ],
        "idleRssMiB": {k: v / MIB for k, v in results.idle_rss.items()},
        "peakRssMiB": {k: v / MIB for k, v in results.peak_rss.items()},
        "pipeline": asdict(results.pipeline) if results.pipeline else None,
        "bare": {
            "cpuMsPerPurchase": results.bare.cpu_ms,
            "propagationP50Ms": 1000 * percentile(results.bare.burst.propagation, 50),
            "propagationP99Ms": p99_ms(results.bare.burst.propagation),
            "faster": {
                "offered": results.bare.faster.offered,
                "achieved": results.bare.faster.achieved,
                "propagationP99Ms": p99_ms(results.bare.faster.propagation),
            }
            if results.bare.faster
            else None,
            "ordersAtSaturationPerSecond": rate(created(results.bare.saturation)),
        }
        if results.bare
        else None,
        "failures": results.failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts, a minute or two")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: docs/bench/")
    args = parser.parse_args()
    plan = Plan.quick() if args.quick else Plan()
    load = os.getloadavg()
    progress = Progress(plan.expected_seconds())
    work = event_pipeline.temporary_folder()
    try:
        # On uvloop, as the services run: the relay and consumer phase measures them so.
        results = uvloop.run(Bench(plan, work, progress).measured())
    except BaseException:
        print(f"\nthe platform's log is in {work / 'platform.log'}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    progress.finish()
    rows = table_rows(results)
    table = report.write(args.out, rows, conditions(plan, args.quick, load), raw_figures(results))
    draw(args.out, results)
    print(table)
    for failure in results.failures:
        print(f"warning: {failure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
