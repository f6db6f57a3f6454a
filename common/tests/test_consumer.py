"""The consumer runner: idempotent handling, "not yet" retries, parking poisoned events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ticketing_common.events import EventEnvelope, TicketCreated
from ticketing_common.messaging import (
    Consumer,
    ConsumerRunner,
    RetryLater,
    TemporaryFailure,
    ensure_stream,
)
from ticketing_common.messaging.parking import list_parked
from ticketing_common.messaging.tables import inbox
from ticketing_common.observability import REQUEST_ID_HEADER, request_id_var
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.stand_ins import effects

MAX_DELIVERIES = 3


def make_consumer(
    poisoned: set[str], not_yet: set[str], seen_request_ids: list[str | None]
) -> Consumer:
    consumer = Consumer("test-consumer")

    @consumer.on(TicketCreated)
    async def record(session: AsyncSession, event: TicketCreated) -> None:
        seen_request_ids.append(request_id_var.get())
        if event.title in poisoned:
            raise ValueError(f"cannot handle {event.title}")
        if event.title in not_yet:
            raise RetryLater("waiting for an earlier version")
        await session.execute(effects.insert().values(note=event.title))

    return consumer


@contextlib.asynccontextmanager
async def running(
    consumer: Consumer,
    js: JetStreamContext,
    sessionmaker: async_sessionmaker[AsyncSession],
    **options: Any,
) -> AsyncIterator[ConsumerRunner]:
    """A runner for ``consumer`` at work in the background (on a stream made first)."""
    await ensure_stream(js)
    runner = ConsumerRunner(consumer, js, sessionmaker, **options)
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)


async def send(
    js: JetStreamContext,
    title: str,
    *,
    envelope: EventEnvelope | None = None,
    msg_id: str | None = None,
) -> EventEnvelope:
    envelope = envelope or EventEnvelope.wrap(
        TicketCreated(
            id=uuid.uuid4(), version=0, title=title, price=Decimal(1), user_id=uuid.uuid4()
        )
    )
    await js.publish(
        "ticket.created",
        envelope.model_dump_json(by_alias=True).encode(),
        headers={"Nats-Msg-Id": msg_id or str(envelope.id), REQUEST_ID_HEADER: f"req-{title}"},
    )
    return envelope


async def notes(sessionmaker: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessionmaker() as session:
        return list((await session.scalars(select(effects.c.note).order_by(effects.c.id))).all())


async def test_same_event_delivered_twice_has_one_effect(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    request_ids: list[str | None] = []
    async with running(make_consumer(set(), set(), request_ids), jetstream, sessionmaker):
        first = await send(jetstream, "once")
        # The same envelope under another message id: JetStream cannot drop it; the inbox must.
        await send(jetstream, "once", envelope=first, msg_id="another-id")
        await send(jetstream, "after")
        await eventually(lambda: _notes_are(sessionmaker, ["once", "after"]))

    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(inbox)) == 2
    assert sorted(await notes(sessionmaker)) == ["after", "once"]
    # The handler ran with the request id of the request that caused the event.
    assert "req-once" in request_ids
    info = await jetstream.consumer_info("EVENTS", "test-consumer")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def _notes_are(sessionmaker: async_sessionmaker[AsyncSession], expected: list[str]) -> bool:
    """The effects, in any order: events of different tickets are handled concurrently."""
    return sorted(await notes(sessionmaker)) == sorted(expected)


async def test_poisoned_event_is_parked_and_later_events_flow(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    poisoned = {"poison"}
    consumer = make_consumer(poisoned, set(), [])
    async with running(consumer, jetstream, sessionmaker, max_deliveries=MAX_DELIVERIES):
        bad = await send(jetstream, "poison")
        await send(jetstream, "good-1")
        await send(jetstream, "good-2")

        async def parked() -> list[dict[str, object]]:
            return await list_parked(sessionmaker)

        rows = await eventually(parked, timeout=20)
        await eventually(lambda: _notes_are(sessionmaker, ["good-1", "good-2"]))

    assert [row["event_id"] for row in rows] == [bad.id]
    assert rows[0]["deliveries"] == MAX_DELIVERIES
    assert "cannot handle poison" in str(rows[0]["error"])
    info = await jetstream.consumer_info("EVENTS", "test-consumer")
    assert info.num_ack_pending == 0 and info.num_pending == 0  # nothing left blocking

    # The operator fixes the cause and replays it: handled once, no longer parked.
    poisoned.clear()
    assert await consumer.replay(sessionmaker, bad.id) is True
    assert await list_parked(sessionmaker) == []
    assert sorted(await notes(sessionmaker)) == ["good-1", "good-2", "poison"]


async def test_replay_that_fails_again_stays_parked(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    consumer = make_consumer({"poison"}, set(), [])
    async with running(consumer, jetstream, sessionmaker, max_deliveries=1):
        bad = await send(jetstream, "poison")
        await eventually(lambda: list_parked(sessionmaker), timeout=10)
    assert await consumer.replay(sessionmaker, bad.id) is False
    (row,) = await list_parked(sessionmaker)
    assert str(row["error"]).startswith("replay failed")
    assert await notes(sessionmaker) == []


async def test_malformed_event_is_parked_at_once(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    async with running(make_consumer(set(), set(), []), jetstream, sessionmaker):
        await jetstream.publish(
            "ticket.created", b"{not json", headers={"Nats-Msg-Id": str(uuid.uuid4())}
        )
        await send(jetstream, "fine")
        rows = await eventually(lambda: list_parked(sessionmaker), timeout=10)
        await eventually(lambda: _notes_are(sessionmaker, ["fine"]))
    assert rows[0]["deliveries"] == 1
    assert "malformed" in str(rows[0]["error"])


async def test_not_yet_is_retried_until_it_applies(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    not_yet = {"later"}
    consumer = make_consumer(set(), not_yet, [])
    async with running(consumer, jetstream, sessionmaker, max_deliveries=20):
        await send(jetstream, "later")
        await send(jetstream, "now")
        await eventually(lambda: _notes_are(sessionmaker, ["now"]))
        not_yet.clear()  # the missing earlier version has arrived
        await eventually(lambda: _notes_are(sessionmaker, ["now", "later"]))
    assert await list_parked(sessionmaker) == []


async def test_dependency_outage_is_retried_past_the_limit_and_never_parked(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    outage = {"down": True}
    attempts: list[int] = []
    consumer = Consumer("outage-test")

    @consumer.on(TicketCreated)
    async def charge(session: AsyncSession, event: TicketCreated) -> None:
        attempts.append(1)
        if outage["down"]:
            raise TemporaryFailure("payment provider unreachable")
        await session.execute(effects.insert().values(note=event.title))

    async with running(consumer, jetstream, sessionmaker, max_deliveries=2):
        await send(jetstream, "refund")
        await eventually(lambda: _more_than(attempts, 3), timeout=20)  # past max_deliveries
        assert await list_parked(sessionmaker) == []
        outage["down"] = False
        await eventually(lambda: _notes_are(sessionmaker, ["refund"]), timeout=20)
    assert await list_parked(sessionmaker) == []


async def _more_than(items: list[int], count: int) -> bool:
    return len(items) > count


async def test_runner_recreates_a_deleted_consumer(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    async with running(make_consumer(set(), set(), []), jetstream, sessionmaker):
        await send(jetstream, "before")
        await eventually(lambda: _notes_are(sessionmaker, ["before"]))
        await jetstream.delete_consumer("EVENTS", "test-consumer")
        await send(jetstream, "after")
        await eventually(lambda: _notes_are(sessionmaker, ["before", "after"]), timeout=30)
