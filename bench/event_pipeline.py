"""Benchmark: how fast events go through the outbox relay and the consumer runner.

Starts its own PostgreSQL and NATS (from the wheels), publishes N messages to JetStream with
nats-py alone (the reference: one publish awaited at a time, with a ``Nats-Msg-Id``, as the
relay does), commits N events through ``publish()``, measures how long the relay takes to get
them all into JetStream, then how long a consumer takes to handle them all (handler + inbox row
per event), and the process's peak memory. Beside each rate, the bench process's own CPU time
per event in that stage (PostgreSQL's and NATS's are not in it): on a busy machine the rates
swing with the load, the CPU per event much less. ``make bench`` runs it as one of its phases.

    .venv/bin/python bench/event_pipeline.py --events 5000

A backlog is the consumer's best case: 64 events per fetch and per transaction. With
``--arriving-at RATE``, events come instead from another process at a steady RATE a second, as
on the platform, and it prints the consumer's CPU per event (a no-op handler: the machinery
alone) beside nats-py's own fetch-and-ack loop fed the same way, and the relay's CPU per event
when each is committed in a transaction of its own at that rate (as a service's requests are),
both ways: handed over at commit (as in a service) and woken by the commit's NOTIFY (as for a
script's writes):

    .venv/bin/python bench/event_pipeline.py --arriving-at 150 --events 1500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import nats
import uvloop
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ticketing_common.cli import settle_garbage_collector
from ticketing_common.db import make_engine, make_sessionmaker
from ticketing_common.embedded import EmbeddedNats, EmbeddedPostgres
from ticketing_common.events import EventEnvelope, TicketCreated
from ticketing_common.messaging import Consumer, ConsumerRunner, OutboxRelay, ensure_stream, publish
from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_common.messaging.tables import inbox, messaging_metadata, outbox
from ticketing_common.testing import TestDatabase

# Not a subject of the catalog: no consumer of the platform's would ever read it.
BARE_SUBJECT = "ticket.bench"
# Long enough for a relay to send the last event committed, short beside a run.
RELAY_GRACE_SECONDS = 0.2
RELAY_ROUNDS = 3


@dataclass(frozen=True)
class PipelineRates:
    """Events per second through each stage (and this process's CPU milliseconds per event in
    it), and the bench process's peak memory."""

    events: int
    bare_publish: Stage
    commit: Stage
    relay: Stage
    consume: Stage
    peak_rss_mib: float


@dataclass(frozen=True)
class Stage:
    per_second: float
    cpu_ms_per_event: float


class _Stopwatch:
    """Wall and CPU time of this process since the last lap."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, events: int) -> Stage:
        wall, cpu = time.perf_counter(), time.process_time()
        stage = Stage(events / (wall - self._wall), 1000 * (cpu - self._cpu) / events)
        self._wall, self._cpu = wall, cpu
        return stage


def new_ticket(title: str) -> TicketCreated:
    """The event both measures send: a ticket listed by someone new."""
    return TicketCreated(
        id=uuid.uuid4(), version=0, title=title, price=Decimal("9.99"), user_id=uuid.uuid4()
    )


async def bare_publish(js: JetStreamContext, count: int) -> Stage:
    """Messages per second nats-py alone gets into the stream, one awaited at a time."""
    stopwatch = _Stopwatch()
    for _ in range(count):
        event_id = str(uuid.uuid4())
        await js.publish(BARE_SUBJECT, b"{}", headers={"Nats-Msg-Id": event_id})
    return stopwatch.lap(count)


@dataclass(frozen=True)
class Servers:
    """The bench's own PostgreSQL database (the outbox and inbox tables in it) and NATS."""

    engine: AsyncEngine
    nats_url: str
    js: JetStreamContext


@contextlib.asynccontextmanager
async def servers(folder: Path, *, durable: bool) -> AsyncIterator[Servers]:
    postgres = EmbeddedPostgres(folder / "pg", durable=durable)
    nats_server = EmbeddedNats(folder / "nats")
    postgres.start()
    nats_server.start()
    try:
        database = await TestDatabase.create(postgres.url, "bench")
        engine = make_engine(database.url)
        async with engine.begin() as conn:
            await conn.run_sync(messaging_metadata.create_all)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await ensure_stream(js)
        settle_garbage_collector()  # as a service does once started
        yield Servers(engine, nats_server.url, js)
        await nc.close()
        await engine.dispose()
    finally:
        nats_server.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def measure(events: int, per_transaction: int, folder: Path) -> PipelineRates:
    async with servers(folder, durable=False) as bench:
        engine, js = bench.engine, bench.js
        sessionmaker = make_sessionmaker(engine)
        bare = await bare_publish(js, events)

        stopwatch = _Stopwatch()
        for start in range(0, events, per_transaction):
            async with sessionmaker() as session:
                for i in range(start, min(start + per_transaction, events)):
                    await publish(session, new_ticket(f"t{i}"))
                await session.commit()
        commit = stopwatch.lap(events)
        flushing = OutboxRelay(engine, js)
        published = await flushing.flush()
        await flushing.close()
        relay = stopwatch.lap(events)
        if published != events:
            raise RuntimeError(f"the relay published {published} of {events} events")

        consumer = Consumer("bench")
        handled: set[uuid.UUID] = set()
        all_handled = asyncio.Event()

        @consumer.on(TicketCreated)
        async def handle(session: AsyncSession, event: TicketCreated) -> None:
            handled.add(event.id)
            if len(handled) == events:
                all_handled.set()

        runner = ConsumerRunner(consumer, js, sessionmaker)  # as a service runs it
        stopwatch = _Stopwatch()
        task = asyncio.create_task(runner.run())
        # Told by the handler, not by polling the inbox: at thousands of events a second, a
        # poll's period would be a good part of what it measures. Then until the last
        # transaction has committed every inbox row.
        await asyncio.wait_for(all_handled.wait(), 600)
        while True:
            async with sessionmaker() as session:
                if await session.scalar(select(func.count()).select_from(inbox)) == events:
                    break
            await asyncio.sleep(0.001)
        consume = stopwatch.lap(events)
        runner.stop()
        await task
        if unsent := await _unsent(sessionmaker, 0.0):
            raise RuntimeError(f"{unsent} events are still in the outbox")
        info = await js.stream_info(STREAM_NAME)
        if info.state.messages != 2 * events:
            raise RuntimeError(f"the stream holds {info.state.messages} messages, not {2 * events}")
    return PipelineRates(
        events=events,
        bare_publish=bare,
        commit=commit,
        relay=relay,
        consume=consume,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


@dataclass(frozen=True)
class ArrivalCosts:
    """This process's CPU milliseconds per event while events arrive at ``rate`` a second."""

    rate: float
    events: int
    nats_py_alone: float  # a pull consumer's fetch(64) and ack, nothing else
    consumer: float  # ConsumerRunner: the same, plus its unit of work with a no-op handler
    # OutboxRelay, each event committed in a transaction of its own at ``rate`` (this process's
    # CPU committing them with the relay running, less committing them with no relay): the
    # session attached to it (each event handed over at commit), or not (woken by a NOTIFY)
    relay_handed_over: list[float]  # one per round
    relay_woken: list[float]


async def publish_at(url: str, subject: str | None, rate: float, count: int) -> None:
    """The other process: ``count`` events at ``rate`` a second (to ``subject``, or to each
    event's own), each published once the last is acked, as a relay does under light load."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        envelope = EventEnvelope.wrap(new_ticket(f"t{i}"))
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        await js.publish(
            subject or envelope.subject.value,
            envelope.model_dump_json(by_alias=True).encode(),
            headers={"Nats-Msg-Id": str(envelope.id)},
        )
    await nc.close()


async def _cpu_per_event(
    nats_url: str, subject: str | None, rate: float, count: int, done: asyncio.Event
) -> float:
    """Milliseconds of this process's CPU per event, from the first sent until ``done``."""
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--publish-to", nats_url, "--subject", subject or "",
        "--arriving-at", str(rate), "--events", str(count),
    )  # fmt: skip
    started = time.process_time()
    await asyncio.wait_for(done.wait(), 60 + 2 * count / rate)
    spent = time.process_time() - started
    if await publisher.wait() != 0:
        raise RuntimeError("the publishing process failed")
    return 1000 * spent / count


async def measure_arrivals(rate: float, count: int, folder: Path) -> ArrivalCosts:
    # PostgreSQL durable, as a service's is: one event per transaction pays its commit here.
    async with servers(folder, durable=True) as bench:
        js = bench.js
        # nats-py alone, on a subject of its own.
        config = ConsumerConfig(
            durable_name="nats-py", filter_subject=BARE_SUBJECT, ack_policy=AckPolicy.EXPLICIT
        )
        await js.add_consumer(STREAM_NAME, config)
        sub = await js.pull_subscribe_bind(durable="nats-py", stream=STREAM_NAME)
        acked = 0
        all_acked = asyncio.Event()

        async def fetch_and_ack() -> None:
            nonlocal acked
            while acked < count:
                with contextlib.suppress(TimeoutError, NatsTimeoutError):
                    for msg in await sub.fetch(64, timeout=5.0):
                        await msg.ack()
                        acked += 1
            all_acked.set()

        fetching = asyncio.create_task(fetch_and_ack())
        alone = await _cpu_per_event(bench.nats_url, BARE_SUBJECT, rate, count, all_acked)
        await fetching

        # The consumer runner, as a service runs it, with nothing for its handler to do.
        consumer = Consumer("bench")
        handled = 0
        all_handled = asyncio.Event()

        @consumer.on(TicketCreated)
        async def handle(session: AsyncSession, event: TicketCreated) -> None:
            nonlocal handled
            handled += 1
            if handled == count:
                all_handled.set()

        sessionmaker = make_sessionmaker(bench.engine)
        runner = ConsumerRunner(consumer, js, sessionmaker)
        task = asyncio.create_task(runner.run())
        ours = await _cpu_per_event(bench.nats_url, None, rate, count, all_handled)
        runner.stop()
        await task

        # Each a difference of two runs, a few tenths of a millisecond of about two: taken in
        # turns, the median of three rounds.
        handed_over, woken = [], []
        for _ in range(RELAY_ROUNDS):
            handed_over.append(await _relay_cpu_per_event(bench, rate, count, attached=True))
            woken.append(await _relay_cpu_per_event(bench, rate, count, attached=False))
    return ArrivalCosts(rate, count, alone, ours, handed_over, woken)


async def _relay_cpu_per_event(bench: Servers, rate: float, count: int, *, attached: bool) -> float:
    """The relay's CPU per event, each committed alone at ``rate``: committing with it running,
    less committing with none (sessions attached to one that never sends, if ``attached``)."""
    sessionmaker = make_sessionmaker(bench.engine)
    if attached:
        OutboxRelay(bench.engine, bench.js).attach(sessionmaker)
    committing = await _committing_at(sessionmaker, rate, count)
    sweeper = OutboxRelay(bench.engine, bench.js)  # sends those before the one measured runs
    await sweeper.flush()
    await sweeper.close()
    relay = OutboxRelay(bench.engine, bench.js)
    if attached:
        relay.attach(sessionmaker)
    relaying = asyncio.create_task(relay.run())
    with_relay = await _committing_at(sessionmaker, rate, count)
    unsent = await _unsent(sessionmaker, RELAY_GRACE_SECONDS + 10.0)
    relay.stop()
    await relaying
    if unsent:
        raise RuntimeError(f"the running relay left {unsent} events in the outbox")
    # A sweep (at start, then every poll) may take an event committed as it claims.
    if attached and relay.sent_at_commit < 0.9 * count:
        raise RuntimeError(f"only {relay.sent_at_commit} of {count} events were handed over")
    return with_relay - committing


async def _unsent(sessionmaker: async_sessionmaker[AsyncSession], timeout: float) -> int:
    """Events still in the outbox once none is left, or ``timeout`` has passed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with sessionmaker() as session:
            unsent = await session.scalar(
                select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            )
        if not unsent or asyncio.get_running_loop().time() > deadline:
            return unsent or 0
        await asyncio.sleep(0.05)


async def _committing_at(
    sessionmaker: async_sessionmaker[AsyncSession], rate: float, count: int
) -> float:
    """Milliseconds of this process's CPU per event, committing ``count`` events one per
    transaction at ``rate`` a second (and a moment after, for a relay to send the last)."""
    loop = asyncio.get_running_loop()
    started, cpu = loop.time(), time.process_time()
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
        async with sessionmaker() as session:
            await publish(session, new_ticket(f"t{i}"))
            await session.commit()
    await asyncio.sleep(RELAY_GRACE_SECONDS)
    return 1000 * (time.process_time() - cpu) / count


def temporary_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ticketing-bench-"))
    folder.chmod(0o755)  # PostgreSQL's unprivileged user must reach it when run as root
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--per-transaction", type=int, default=1)
    parser.add_argument("--arriving-at", type=float, help="events a second, from another process")
    parser.add_argument("--publish-to", help=argparse.SUPPRESS)  # that other process
    parser.add_argument("--subject", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish_to:
        asyncio.run(publish_at(args.publish_to, args.subject, args.arriving_at, args.events))
        return
    if args.arriving_at:
        costs = uvloop.run(measure_arrivals(args.arriving_at, args.events, temporary_folder()))
        print(f"{costs.events} events arriving at {costs.rate:g}/s, this process's CPU per event:")
        print(f"nats-py alone (fetch, ack): {costs.nats_py_alone:6.3f} ms")
        print(f"consumer runner, no-op    : {costs.consumer:6.3f} ms")
        for name, rounds in (
            ("outbox relay, handed over", costs.relay_handed_over),
            ("outbox relay, woken      ", costs.relay_woken),
        ):
            spread = ", ".join(f"{one:.3f}" for one in rounds)
            print(f"{name}: {statistics.median(rounds):6.3f} ms (rounds: {spread})")
        return
    # On uvloop, as every service runs (uvicorn takes it when installed).
    rates = uvloop.run(measure(args.events, args.per_transaction, temporary_folder()))
    print(f"events: {rates.events} ({args.per_transaction} per transaction)")
    for name, stage, unit in (
        ("bare JetStream publish", rates.bare_publish, "messages/s"),
        ("commit to outbox", rates.commit, "events/s"),
        ("relay to NATS", rates.relay, "events/s"),
        ("consume + inbox", rates.consume, "events/s"),
    ):
        print(
            f"{name:<23}: {stage.per_second:9.0f} {unit:<10}"
            f"  {stage.cpu_ms_per_event:6.3f} ms CPU each"
        )
    print(f"peak RSS               : {rates.peak_rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
