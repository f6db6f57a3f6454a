"""The reference for CPU per purchase: the same flow, wired bare.

A purchase on the platform is one request and four deliveries: orders takes ``POST
/api/orders`` and publishes ``order.created``; tickets marks the ticket reserved and publishes
``ticket.updated``; payments stores the order; expiration schedules its timer (a JetStream
message schedule); orders takes ``ticket.updated``. Here four processes do that same I/O with
the same libraries (FastAPI on the same uvicorn, asyncpg, nats-py), on the same stream, and
none of the platform's machinery: no ORM, outbox, inbox, parking or entity order, no
middleware, no logs, no transaction beyond one statement's.

- orders checks the cookie and the body as ``bare_app.py`` does, inserts the order (one
  statement, which reads the ticket's price from its replica), publishes ``order.created`` and
  awaits the ack, then answers 201 (answering first changes nothing at saturation: measured,
  the process is short of CPU, not of time);
- each consumer fetches as the platform's runner does (up to 64; after a fetch that drained the
  stream, a pause of ``FETCH_PAUSE_SECONDS`` to let more arrive), applies what it fetched in one
  statement, publishes what it must (acks awaited together) and acks each message.

PostgreSQL (durable, as the platform's) and NATS are started here too. Driven at the rate and
count of ``make bench``'s burst, it gives every process's CPU per purchase (the two servers
included): what the flow costs at the least with these libraries. What the platform spends
beyond that is its machinery's, and what its guarantees cost.

    .venv/bin/python bench/bare_purchase.py --purchases 768 --rate 153.6
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import uvicorn
import uvloop
from bare_app import OrderIn, UserId  # the same checks as the bare reference app
from fastapi import FastAPI, HTTPException, status
from loadgen import Answer, Request, closed_loop, connections, open_loop, percentile
from loadgen import rate as answers_per_second
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from platform_under_test import Meter

from ticketing_common.cli import settle_garbage_collector
from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port, wait_for_port
from ticketing_common.messaging.consumer import FETCH_PAUSE_SECONDS, FETCH_SECONDS
from ticketing_common.messaging.streams import STREAM_NAME, ensure_stream
from ticketing_common.testing import TestDatabase
from ticketing_common.testing.helpers import eventually

FETCH_BATCH = 64  # as the platform's runner asks
EXPIRY = timedelta(hours=1)  # no timer fires during a run
# Each consumer: what it reads. orders serves HTTP besides.
READS = {
    "tickets": "order.created",
    "payments": "order.created",
    "expiration": "order.created",
    "orders": "ticket.updated",
}
SCHEMA = """
CREATE TABLE tickets (id uuid PRIMARY KEY, title text NOT NULL, price numeric NOT NULL,
    user_id uuid NOT NULL, order_id uuid, version int NOT NULL DEFAULT 0);
CREATE TABLE order_tickets (id uuid PRIMARY KEY, title text NOT NULL, price numeric NOT NULL,
    version int NOT NULL DEFAULT 0);
CREATE TABLE orders (id uuid PRIMARY KEY, user_id uuid NOT NULL, ticket_id uuid NOT NULL,
    price numeric NOT NULL, status text NOT NULL, expires_at timestamptz NOT NULL);
CREATE UNIQUE INDEX live_order ON orders (ticket_id) WHERE status <> 'cancelled';
CREATE TABLE payment_orders (id uuid PRIMARY KEY, user_id uuid NOT NULL,
    price numeric NOT NULL, status text NOT NULL);
"""
INSERT_ORDER = """
INSERT INTO orders (id, user_id, ticket_id, price, status, expires_at)
SELECT $1, $2, id, price, 'created', $3 FROM order_tickets WHERE id = $4
ON CONFLICT (ticket_id) WHERE status <> 'cancelled' DO NOTHING
RETURNING price
"""
RESERVE = """
UPDATE tickets SET order_id = x.order_id, version = version + 1
FROM unnest($1::uuid[], $2::uuid[]) AS x(ticket_id, order_id) WHERE tickets.id = x.ticket_id
RETURNING tickets.id, tickets.title, tickets.price, tickets.user_id, tickets.order_id,
    tickets.version
"""
STORE_PAYMENT_ORDERS = """
INSERT INTO payment_orders (id, user_id, price, status)
SELECT id, user_id, price, 'created' FROM unnest($1::uuid[], $2::uuid[], $3::numeric[])
    AS x(id, user_id, price)
ON CONFLICT DO NOTHING
"""
UPDATE_REPLICA = """
UPDATE order_tickets SET version = x.version
FROM unnest($1::uuid[], $2::int[]) AS x(id, version) WHERE order_tickets.id = x.id
"""


# A message to publish: subject, body, headers.
Message = tuple[str, bytes, dict[str, str]]
Apply = Callable[[list[dict[str, Any]]], Awaitable[None]]


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, default=str).encode()


async def _publish_all(js: JetStreamContext, messages: Sequence[Message]) -> None:
    """Publish each with a ``Nats-Msg-Id``, acks awaited together (as the relay sends a batch)."""
    await asyncio.gather(
        *(
            js.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.uuid4()), **headers})
            for subject, data, headers in messages
        )
    )


async def consume(
    js: JetStreamContext,
    durable: str,
    apply: Apply,
    pause: float,
) -> None:
    """Fetch, apply and ack, as the platform's runner paces it, until cancelled."""
    sub = await js.pull_subscribe_bind(durable=durable, stream=STREAM_NAME)
    while True:
        try:
            messages: list[Msg] = await sub.fetch(FETCH_BATCH, timeout=FETCH_SECONDS)
        except (TimeoutError, NatsTimeoutError):
            continue
        await apply([json.loads(msg.data) for msg in messages])
        for msg in messages:
            await msg.ack()
        if len(messages) < FETCH_BATCH:
            await asyncio.sleep(pause)


def appliers(pool: asyncpg.Pool, js: JetStreamContext) -> dict[str, Apply]:
    """Each consumer's work on a fetch's events, in one statement."""

    async def reserve(orders: list[dict[str, Any]]) -> None:
        rows = await pool.fetch(
            RESERVE,
            [uuid.UUID(o["ticket"]["id"]) for o in orders],
            [uuid.UUID(o["id"]) for o in orders],
        )
        updated: list[Message] = [("ticket.updated", _dumps(dict(row)), {}) for row in rows]
        await _publish_all(js, updated)

    async def store(orders: list[dict[str, Any]]) -> None:
        await pool.execute(
            STORE_PAYMENT_ORDERS,
            [uuid.UUID(o["id"]) for o in orders],
            [uuid.UUID(o["userId"]) for o in orders],
            [o["ticket"]["price"] for o in orders],
        )

    async def schedule(orders: list[dict[str, Any]]) -> None:
        timers: list[Message] = [
            (
                f"schedule.expiration.{o['id']}",
                _dumps({"orderId": o["id"]}),
                {
                    "Nats-Schedule": f"@at {o['expiresAt']}",
                    "Nats-Schedule-Target": "expiration.complete",
                },
            )
            for o in orders
        ]
        await _publish_all(js, timers)

    async def update_replica(tickets: list[dict[str, Any]]) -> None:
        await pool.execute(
            UPDATE_REPLICA, [uuid.UUID(t["id"]) for t in tickets], [t["version"] for t in tickets]
        )

    return {"tickets": reserve, "payments": store, "expiration": schedule, "orders": update_replica}


@contextlib.asynccontextmanager
async def connected(
    database_url: str, nats_url: str
) -> AsyncIterator[tuple[asyncpg.Pool, JetStreamContext]]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    nc = await nats.connect(nats_url)
    try:
        yield pool, nc.jetstream()
    finally:
        await nc.close()
        await pool.close()


def orders_app(database_url: str, nats_url: str, pause: float) -> FastAPI:
    """orders: the route, and the consumer of ``ticket.updated`` beside it."""
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with connected(database_url, nats_url) as (pool, js):
            state.update(pool=pool, js=js)
            consuming = asyncio.create_task(
                consume(js, "bare-orders", appliers(pool, js)["orders"], pause)
            )
            settle_garbage_collector()
            yield
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/orders", status_code=status.HTTP_201_CREATED)
    async def create_order(body: OrderIn, user_id: UserId) -> dict[str, Any]:
        order_id, expires_at = uuid.uuid4(), datetime.now(UTC) + EXPIRY
        price = await state["pool"].fetchval(
            INSERT_ORDER, order_id, user_id, expires_at, body.ticket_id
        )
        if price is None:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "Ticket is already reserved")
        order = {
            "id": str(order_id),
            "status": "created",
            "userId": str(user_id),
            "expiresAt": expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "version": 0,
            "ticket": {"id": str(body.ticket_id), "price": str(price)},
        }
        await _publish_all(state["js"], [("order.created", _dumps(order), {})])
        return order

    return app


async def run_consumer(role: str, database_url: str, nats_url: str, pause: float) -> None:
    async with connected(database_url, nats_url) as (pool, js):
        settle_garbage_collector()
        await consume(js, f"bare-{role}", appliers(pool, js)[role], pause)


# -- the measure -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Saturation:
    """How long to drive the bare orders flat out, with how many connections and tickets."""

    seconds: float
    connections: int
    tickets: int


@dataclass(frozen=True)
class Steady:
    """Purchases offered at a steady rate: how many were kept up with, how fast each went."""

    offered: float
    achieved: float  # purchases a second, from the first sent to the last propagated
    propagation: list[float]  # seconds from each 201 to its ticket.updated


@dataclass(frozen=True)
class BareCosts:
    purchases: int
    cpu_ms: dict[str, float]  # per purchase, by process (postgres and nats included)
    burst: Steady  # those purchases, the CPU's
    faster: Steady | None  # then more, at a higher rate (no CPU read)
    saturation: list[Answer]  # then ``POST /api/orders`` flat out


async def _database(postgres: EmbeddedPostgres, tickets: int) -> tuple[str, list[str]]:
    """A database with the four parts' tables, ``tickets`` tickets in it; its URL and the ids."""
    url = with_driver((await TestDatabase.create(postgres.url, "bare")).url, driver=PLAIN)
    conn = await asyncpg.connect(url)
    await conn.execute(SCHEMA)
    ids = [uuid.uuid4() for _ in range(tickets)]
    rows = [(t, f"Bench {i}", 25.5) for i, t in enumerate(ids)]
    await conn.executemany(
        "INSERT INTO tickets (id, title, price, user_id) VALUES ($1, $2, $3, gen_random_uuid())",
        rows,
    )
    await conn.executemany("INSERT INTO order_tickets (id, title, price) VALUES ($1, $2, $3)", rows)
    await conn.close()
    return url, [str(t) for t in ids]


class _Wiring:
    """The four parts running, on a PostgreSQL and a NATS of their own, and what each ticket's
    ``ticket.updated`` was seen at."""

    def __init__(self, js: JetStreamContext, orders_url: str, pids: dict[str, int]) -> None:
        self.js = js
        self.orders_url = orders_url
        self.meter = Meter(pids)  # each process with what runs under it (PostgreSQL's backends)
        self.reserved: dict[str, float] = {}  # ticket id -> loop time

    async def on_reserved(self, msg: Msg) -> None:
        self.reserved[json.loads(msg.data)["id"]] = asyncio.get_running_loop().time()

    async def steady(self, requests: Sequence[Request], offered: float) -> Steady:
        """``requests`` at ``offered`` a second, until each propagated and every part is idle."""
        pool = connections(self.orders_url, 256)
        started = asyncio.get_running_loop().time()
        answers = await open_loop(pool, requests, offered)
        for connection in pool:
            connection.close()
        refused = [a.status for a in answers if a.status != 201]
        if refused:
            raise RuntimeError(f"the bare orders refused {len(refused)} orders: {refused[:5]}")

        async def propagated() -> bool:
            return all(a.request.tag in self.reserved for a in answers)

        async def settled() -> bool:  # every event handled and acked, orders' own too
            infos = [await self.js.consumer_info(STREAM_NAME, f"bare-{r}") for r in READS]
            return not any(info.num_pending or info.num_ack_pending for info in infos)

        await eventually(propagated, timeout=60, interval=0.01)
        await eventually(settled, timeout=60, interval=0.01)
        last = max(self.reserved[a.request.tag] for a in answers)
        return Steady(
            offered,
            len(answers) / (last - started),
            [self.reserved[a.request.tag] - a.done for a in answers],
        )


async def measure(
    purchases: int,
    rate: float,
    jwt_key: str,
    order_request: Callable[[str, int], Request],
    folder: Path,
    *,
    fetch_pause: float = FETCH_PAUSE_SECONDS,
    faster: tuple[float, int] | None = None,
    saturation: Saturation | None = None,
) -> BareCosts:
    """``purchases`` at ``rate`` a second through the bare wiring, with every process's CPU;
    then, if asked, ``faster`` = (a rate, a count) and orders at ``saturation``.
    ``order_request(ticket_id, i)`` is the i-th ``POST /api/orders`` (a ``loadgen.Request``,
    with a cookie signed with ``jwt_key``); ``fetch_pause``: the consumers' pause after a fetch
    that drained the stream."""
    faster_rate, faster_count = faster or (0.0, 0)
    saturation = saturation or Saturation(0.0, 0, 0)
    postgres = EmbeddedPostgres(folder / "pg", durable=True)
    nats_server = EmbeddedNats(folder / "nats")
    postgres.start()
    nats_server.start()
    parts: dict[str, subprocess.Popen[bytes]] = {}
    try:
        url, tickets = await _database(postgres, purchases + faster_count + saturation.tickets)
        requests = [order_request(ticket, i) for i, ticket in enumerate(tickets)]
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await ensure_stream(js)
        for role, subject in READS.items():
            config = ConsumerConfig(
                durable_name=f"bare-{role}", filter_subject=subject, ack_policy=AckPolicy.EXPLICIT
            )
            await js.add_consumer(STREAM_NAME, config)
        port = free_port()
        for role in READS:
            parts[role] = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, __file__, "--role", role, "--database", url,
                 "--nats", nats_server.url, "--port", str(port),
                 "--fetch-pause", str(fetch_pause)],
                env=os.environ | {"JWT_KEY": jwt_key},
            )  # fmt: skip
        wait_for_port(port, 60, parts["orders"])

        async def fetching() -> bool:  # each part waiting on its first fetch
            infos = [await js.consumer_info(STREAM_NAME, f"bare-{role}") for role in READS]
            return all(info.num_waiting for info in infos)

        await eventually(fetching, timeout=60, interval=0.01)
        assert postgres.process is not None and nats_server.process is not None
        pids = {role: part.pid for role, part in parts.items()}
        pids |= {"postgres": postgres.process.pid, "nats": nats_server.process.pid}
        wiring = _Wiring(js, f"http://127.0.0.1:{port}", pids)
        await nc.subscribe("ticket.updated", cb=wiring.on_reserved)

        before = wiring.meter.cpu()
        burst = await wiring.steady(requests[:purchases], rate)
        after = wiring.meter.cpu()
        cpu_ms = {name: 1000 * (after[name] - before[name]) / purchases for name in pids}
        more = requests[purchases : purchases + faster_count]
        at_faster = await wiring.steady(more, faster_rate) if more else None
        saturated: list[Answer] = []
        if saturation.seconds:
            pool = connections(wiring.orders_url, saturation.connections)
            rest = iter(requests[purchases + faster_count :])
            saturated = await closed_loop(pool, rest, saturation.seconds)
            for connection in pool:
                connection.close()
        await nc.close()
        return BareCosts(purchases, cpu_ms, burst, at_faster, saturated)
    finally:
        for part in parts.values():
            part.terminate()
            try:
                part.wait(10)
            except subprocess.TimeoutExpired:
                part.kill()
                part.wait()
        nats_server.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--purchases", type=int, default=768)
    parser.add_argument("--rate", type=float, default=153.6, help="purchases a second")
    parser.add_argument(
        "--fetch-pause",
        type=float,
        default=FETCH_PAUSE_SECONDS,
        help="seconds a consumer waits after a fetch that drained the stream (the runner's)",
    )
    parser.add_argument(
        "--faster", type=float, default=500.0, help="then 5 s at this rate (0: not)"
    )
    parser.add_argument(
        "--saturation-seconds", type=float, default=10.0, help="then orders flat out (0: not)"
    )
    parser.add_argument("--role", choices=sorted(READS), help=argparse.SUPPRESS)  # a part
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--nats", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "orders":
        app = orders_app(args.database, args.nats, args.fetch_pause)
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=args.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,  # the load generator's connections may linger
        )
    elif args.role:
        uvloop.run(run_consumer(args.role, args.database, args.nats, args.fetch_pause))
    else:
        from event_pipeline import temporary_folder
        from run import User, order

        key = uuid.uuid4().hex * 2
        buyers = [User.mint(key) for _ in range(32)]
        costs = uvloop.run(
            measure(
                args.purchases,
                args.rate,
                key,
                lambda ticket, i: order(ticket, buyers[i % len(buyers)]),
                temporary_folder(),
                fetch_pause=args.fetch_pause,
                faster=(args.faster, round(5 * args.faster)),
                saturation=Saturation(args.saturation_seconds, len(buyers), 5000),
            )
        )
        print(
            f"{costs.purchases} purchases at {args.rate:g}/s, wired bare (a pause of "
            f"{1000 * args.fetch_pause:g} ms after a short fetch), CPU per purchase:"
        )
        for name, ms in sorted(costs.cpu_ms.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<11} {ms:5.2f} ms")
        print(f"  {'every process':<11} {sum(costs.cpu_ms.values()):5.2f} ms per purchase")
        for step in (costs.burst, costs.faster):
            if step is not None:
                p50, p99 = (1000 * percentile(step.propagation, p) for p in (50, 99))
                print(
                    f"at {step.offered:g}/s offered: {step.achieved:.0f} purchases/s, "
                    f"propagation p50 {p50:.0f} ms, p99 {p99:.0f} ms"
                )
        if costs.saturation:
            saturated = [a for a in costs.saturation if a.status == 201]
            p99 = 1000 * percentile([a.latency for a in saturated], 99)
            print(
                f"POST /api/orders at saturation ({len(buyers)} connections): "
                f"{answers_per_second(saturated):.0f} req/s, p99 {p99:.0f} ms"
            )


if __name__ == "__main__":
    main()
