"""Benchmark: how fast events go through the outbox relay and the consumer runner.

Starts its own PostgreSQL and NATS (from the wheels), commits N events through ``publish()``,
measures how long the relay takes to get them all into JetStream, then how long a consumer takes
to handle them all (handler + inbox row per event), and the process's peak memory.

    .venv/bin/python bench/event_pipeline.py --events 5000
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import nats
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ticketing_common.db import make_engine, make_sessionmaker
from ticketing_common.embedded import EmbeddedNats, EmbeddedPostgres
from ticketing_common.events import TicketCreated
from ticketing_common.messaging import Consumer, ConsumerRunner, OutboxRelay, ensure_stream, publish
from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_common.messaging.tables import inbox, messaging_metadata, outbox
from ticketing_common.testing import TestDatabase


async def run(events: int, per_transaction: int, folder: Path) -> None:
    postgres, nats_server = (
        EmbeddedPostgres(folder / "pg", durable=False),
        EmbeddedNats(folder / "nats"),
    )
    postgres.start()
    nats_server.start()
    try:
        database = await TestDatabase.create(postgres.url, "bench")
        engine = make_engine(database.url)
        async with engine.begin() as conn:
            await conn.run_sync(messaging_metadata.create_all)
        sessionmaker = make_sessionmaker(engine)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await ensure_stream(js)

        started = time.perf_counter()
        for start in range(0, events, per_transaction):
            async with sessionmaker() as session:
                for i in range(start, min(start + per_transaction, events)):
                    await publish(
                        session,
                        TicketCreated(
                            id=uuid.uuid4(),
                            version=0,
                            title=f"t{i}",
                            price=Decimal("9.99"),
                            user_id=uuid.uuid4(),
                        ),
                    )
                await session.commit()
        committed = time.perf_counter()
        published = await OutboxRelay(engine, sessionmaker, js).flush()
        relayed = time.perf_counter()
        assert published == events

        consumer = Consumer("bench")

        @consumer.on(TicketCreated)
        async def handle(session: AsyncSession, event: TicketCreated) -> None:
            pass

        runner = ConsumerRunner(consumer, js, sessionmaker, concurrency=32)
        task = asyncio.create_task(runner.run())
        consume_started = time.perf_counter()
        while True:
            async with sessionmaker() as session:
                if await session.scalar(select(func.count()).select_from(inbox)) == events:
                    break
            await asyncio.sleep(0.05)
        consumed = time.perf_counter()
        runner.stop()
        await task
        async with sessionmaker() as session:
            assert (
                await session.scalar(
                    select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
                )
                == 0
            )
        info = await js.stream_info(STREAM_NAME)
        await nc.close()
        await engine.dispose()

        def rate(seconds: float) -> str:
            return f"{seconds:7.2f}s  {events / seconds:9.0f} events/s"

        print(
            f"events: {events} ({per_transaction} per transaction), stream: {info.state.messages}"
        )
        print(f"commit to outbox : {rate(committed - started)}")
        print(f"relay to NATS    : {rate(relayed - committed)}")
        print(f"consume + inbox  : {rate(consumed - consume_started)}")
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS         : {peak_mib:.0f} MiB")
    finally:
        nats_server.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--per-transaction", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ticketing-bench-"))
    folder.chmod(0o755)  # PostgreSQL's unprivileged user must reach it when run as root
    asyncio.run(run(args.events, args.per_transaction, folder))


if __name__ == "__main__":
    main()
