"""Start-up and shutdown of the event machinery, and what the logs carry."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from decimal import Decimal

from nats.js import JetStreamContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ticketing_common.db import make_metadata
from ticketing_common.events import EventEnvelope, TicketCreated
from ticketing_common.messaging import Consumer, ConsumerRunner, ensure_stream
from ticketing_common.messaging.streams import DUPLICATE_WINDOW_SECONDS, STREAM_NAME
from ticketing_common.observability import JsonFormatter, request_id_var
from ticketing_common.testing import TestDatabase
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.stand_ins import effects, effects_metadata


async def test_stream_is_created_idempotently_with_a_duplicate_window(
    jetstream: JetStreamContext,
) -> None:
    await ensure_stream(jetstream)
    await ensure_stream(jetstream)  # a second replica starting
    info = await jetstream.stream_info(STREAM_NAME)
    assert info.config.duplicate_window == DUPLICATE_WINDOW_SECONDS
    assert info.config.allow_msg_schedules is True
    # An older configuration is brought up to date rather than refused.
    await jetstream.update_stream(info.config.evolve(duplicate_window=60.0))
    await ensure_stream(jetstream)
    info = await jetstream.stream_info(STREAM_NAME)
    assert info.config.duplicate_window == DUPLICATE_WINDOW_SECONDS


async def test_shutdown_finishes_the_handler_in_flight(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    await ensure_stream(jetstream)
    started, release = asyncio.Event(), asyncio.Event()
    consumer = Consumer("shutdown-test")

    @consumer.on(TicketCreated)
    async def slow(session: AsyncSession, event: TicketCreated) -> None:
        started.set()
        await release.wait()
        await session.execute(effects.insert().values(note=event.title))

    runner = ConsumerRunner(consumer, jetstream, sessionmaker)
    task = asyncio.create_task(runner.run())
    envelope = EventEnvelope.wrap(
        TicketCreated(
            id=uuid.uuid4(), version=0, title="in flight", price=Decimal(5), user_id=uuid.uuid4()
        )
    )
    await jetstream.publish("ticket.created", envelope.model_dump_json(by_alias=True).encode())
    await asyncio.wait_for(started.wait(), 10)

    runner.stop()  # SIGTERM arrives while the handler runs
    release.set()
    await asyncio.wait_for(task, 10)

    async with sessionmaker() as session:
        assert (await session.scalars(select(effects.c.note))).all() == ["in flight"]

    async def acked() -> bool:
        info = await jetstream.consumer_info(STREAM_NAME, "shutdown-test")
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await eventually(acked, timeout=5)


def test_json_log_lines_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token = request_id_var.set("abc123")
    try:
        logger.info("order %s created", "o-1", extra={"fields": {"orderId": "o-1"}})
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["message"] == "order o-1 created"
    assert line["requestId"] == "abc123"
    assert line["orderId"] == "o-1"
    assert line["level"] == "INFO"


async def test_schema_drift_sees_a_table_the_models_lack(common_db: TestDatabase) -> None:
    # The "effects" table exists in the database but not in this empty service metadata.
    diffs = await common_db.schema_drift(make_metadata())
    assert [d[0] for d in diffs] == ["remove_table"]
    assert diffs[0][1].name == "effects"
    assert await common_db.schema_drift(effects_metadata) == []
