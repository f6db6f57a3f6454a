"""The consumer runner: idempotent handling, "not yet" retries, parking poisoned events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from nats.js import JetStreamContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ticketing_common.events import EventEnvelope, TicketCreated
from ticketing_common.messaging import (
    Consumer,
    ConsumerRunner,
    Received,
    RetryLater,
    TemporaryFailure,
    ensure_stream,
)
from ticketing_common.messaging.parking import Parkable, list_parked, park
from ticketing_common.messaging.tables import inbox
from ticketing_common.observability import REQUEST_ID_HEADER, request_id_var
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import NatsServer
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
    tries: list[str | None] = []  # a request id per try
    consumer = make_consumer(set(), not_yet, tries)
    async with running(consumer, jetstream, sessionmaker, max_deliveries=1):
        await send(jetstream, "later")
        await send(jetstream, "now")
        await eventually(lambda: _notes_are(sessionmaker, ["now"]))
        # "Not yet" counts for nothing: tried well past the one failure allowed, never parked.
        await eventually(lambda: _more_than(tries, 4), timeout=20)
        assert await list_parked(sessionmaker) == []
        not_yet.clear()  # the missing earlier version has arrived
        await eventually(lambda: _notes_are(sessionmaker, ["now", "later"]))
    assert await list_parked(sessionmaker) == []


@pytest.mark.parametrize(
    "outage_error",
    [
        TemporaryFailure("payment provider unreachable"),
        # A dependency's own timeout is an outage (TimeoutError is an OSError), unlike the
        # handler's time budget running out.
        TimeoutError("connect timed out"),
        ConnectionRefusedError("database refused the connection"),
    ],
    ids=["temporary-failure", "dependency-timeout", "connection-refused"],
)
async def test_dependency_outage_is_retried_past_the_limit_and_never_parked(
    sessionmaker: async_sessionmaker[AsyncSession],
    jetstream: JetStreamContext,
    outage_error: Exception,
) -> None:
    outage = {"down": True}
    attempts: list[int] = []
    consumer = Consumer("outage-test")

    @consumer.on(TicketCreated)
    async def charge(session: AsyncSession, event: TicketCreated) -> None:
        attempts.append(1)
        if outage["down"]:
            raise outage_error
        await session.execute(effects.insert().values(note=event.title))

    async with running(consumer, jetstream, sessionmaker, max_deliveries=2):
        await send(jetstream, "refund")
        await eventually(lambda: _more_than(attempts, 3), timeout=20)  # past max_deliveries
        assert await list_parked(sessionmaker) == []
        outage["down"] = False
        await eventually(lambda: _notes_are(sessionmaker, ["refund"]), timeout=20)
    assert await list_parked(sessionmaker) == []


async def _more_than(items: list[Any], count: int) -> bool:
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


async def test_a_runner_started_while_nats_is_down_consumes_once_it_is_back(
    sessionmaker: async_sessionmaker[AsyncSession],
    jetstream: JetStreamContext,
    nats_server: NatsServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A service (re)started during a NATS outage: its consumer cannot be made yet. The runner
    keeps trying, and does not die (a dead one would leave every later event unhandled)."""
    caplog.set_level(logging.WARNING, logger="ticketing_common.messaging")
    await ensure_stream(jetstream)
    runner = ConsumerRunner(make_consumer(set(), set(), []), jetstream, sessionmaker)
    nats_server.stop()
    task = asyncio.create_task(runner.run())

    async def tried_twice() -> bool:
        return sum("cannot make the consumer yet" in r.message for r in caplog.records) >= 2

    try:
        await eventually(tried_twice, timeout=30)
    finally:
        nats_server.start()
    await send(jetstream, "after the outage")
    await eventually(lambda: _notes_are(sessionmaker, ["after the outage"]), timeout=30)
    assert not task.done()
    runner.stop()
    await asyncio.wait_for(task, 10)


async def test_a_handler_past_its_time_budget_has_failed_and_is_parked(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    stuck_for_good = HoldingConsumer(Consumer("budget-test"), held="hangs")  # never released

    # ack_wait 1s: a budget of half a second.
    async with running(
        stuck_for_good.consumer, jetstream, sessionmaker, max_deliveries=2, ack_wait_seconds=1
    ):
        stuck = await send(jetstream, "hangs")
        (row,) = await eventually(lambda: list_parked(sessionmaker), timeout=20)
    assert stuck_for_good.entered.is_set() and "hangs" not in stuck_for_good.handled_at
    assert row["event_id"] == stuck.id
    assert row["deliveries"] == 2  # two tries, each past its budget
    assert "budget" in str(row["error"])


@dataclass
class HoldingConsumer:
    """Notes each event's title (and when it was handled), holding the one titled ``held`` until
    ``release`` is set; ``entered`` is set once that one is in its handler."""

    consumer: Consumer
    held: str
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handled_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        @self.consumer.on(TicketCreated)
        async def record(session: AsyncSession, event: TicketCreated) -> None:
            if event.title == self.held:
                self.entered.set()
                await self.release.wait()
            await session.execute(effects.insert().values(note=event.title))
            self.handled_at[event.title] = asyncio.get_running_loop().time()


def ticket_event(ticket_id: uuid.UUID, title: str, version: int = 0) -> EventEnvelope:
    """An event of the ticket ``ticket_id`` (its entity key), told apart by its title."""
    return EventEnvelope.wrap(
        TicketCreated(
            id=ticket_id, version=version, title=title, price=Decimal(1), user_id=uuid.uuid4()
        )
    )


async def test_a_stuck_entity_holds_up_only_its_own_events_each_entity_in_order(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    loop = asyncio.get_running_loop()
    holding = HoldingConsumer(Consumer("lanes-test"), held="stuck")
    consumer, handled_at = holding.consumer, holding.handled_at
    stuck_ticket, busy_ticket = uuid.uuid4(), uuid.uuid4()
    async with running(consumer, jetstream, sessionmaker, ack_wait_seconds=60):
        await send(jetstream, "stuck", envelope=ticket_event(stuck_ticket, "stuck"))
        await send(jetstream, "behind", envelope=ticket_event(stuck_ticket, "behind"))
        await asyncio.wait_for(holding.entered.wait(), 10)
        # Many events of one ticket, and single events of many others, all at once.
        busy = [f"busy-{n:02d}" for n in range(30)]
        others = [f"other-{n:02d}" for n in range(30)]
        sent_at: dict[str, float] = {}
        for busy_title, other_title in zip(busy, others, strict=True):
            sent_at[other_title] = loop.time()
            await send(jetstream, busy_title, envelope=ticket_event(busy_ticket, busy_title))
            await send(jetstream, other_title)
        await eventually(lambda: _notes_are(sessionmaker, busy + others))
        assert "behind" not in handled_at  # still behind the stuck one
        holding.release.set()
        await eventually(lambda: _notes_are(sessionmaker, [*busy, *others, "stuck", "behind"]))

    # The design's bound, not a speed measure: another ticket never waits on a stuck one.
    assert max(handled_at[title] - sent_at[title] for title in others) < 1.0
    in_order = [note for note in await notes(sessionmaker) if note in busy]
    assert in_order == busy
    assert handled_at["stuck"] < handled_at["behind"]


async def test_later_events_of_a_parked_entity_wait_behind_it_and_replay_in_order(
    sessionmaker: async_sessionmaker[AsyncSession],
    jetstream: JetStreamContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="ticketing_common.messaging")
    poisoned = {"a-1"}
    consumer = make_consumer(poisoned, set(), [])
    ticket_a = uuid.uuid4()
    async with running(consumer, jetstream, sessionmaker, max_deliveries=1):
        first = await send(jetstream, "a-1", envelope=ticket_event(ticket_a, "a-1"))
        await send(jetstream, "a-2", envelope=ticket_event(ticket_a, "a-2", 1))
        await send(jetstream, "b-1")
        await send(jetstream, "a-3", envelope=ticket_event(ticket_a, "a-3", 2))
        rows = await eventually(lambda: _parked_count(sessionmaker, 3), timeout=20)
        await eventually(lambda: _notes_are(sessionmaker, ["b-1"]))

        titles = [row["envelope"]["data"]["title"] for row in rows]
        assert titles == ["a-1", "a-2", "a-3"]
        assert [row["waiting_behind"] for row in rows] == [None, first.id, first.id]
        assert {row["entity_key"] for row in rows} == {f"ticket:{ticket_a}"}
        # The operator is told, at error level, of each one.
        parked_lines = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert sum(str(first.id) in r.getMessage() for r in parked_lines) == 3

        # Fixed; replaying any of them brings the ticket up to date, in order.
        poisoned.clear()
        assert await consumer.replay(sessionmaker, rows[2]["event_id"]) is True
        assert await list_parked(sessionmaker) == []
        # The entity flows again.
        await send(jetstream, "a-4", envelope=ticket_event(ticket_a, "a-4", 3))
        await eventually(lambda: _notes_are(sessionmaker, ["b-1", "a-1", "a-2", "a-3", "a-4"]))
    a_notes = [note for note in await notes(sessionmaker) if note.startswith("a-")]
    assert a_notes == ["a-1", "a-2", "a-3", "a-4"]


async def test_a_replay_that_fails_on_a_later_event_makes_it_the_first(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    poisoned = {"a-1", "a-2"}
    consumer = make_consumer(poisoned, set(), [])
    ticket_a = uuid.uuid4()
    async with running(consumer, jetstream, sessionmaker, max_deliveries=1):
        first = await send(jetstream, "a-1", envelope=ticket_event(ticket_a, "a-1"))
        await send(jetstream, "a-2", envelope=ticket_event(ticket_a, "a-2", 1))
        await send(jetstream, "a-3", envelope=ticket_event(ticket_a, "a-3", 2))
        await eventually(lambda: _parked_count(sessionmaker, 3), timeout=20)
    poisoned.discard("a-1")
    assert await consumer.replay(sessionmaker, first.id) is False
    second, third = await list_parked(sessionmaker)
    assert str(second["error"]).startswith("replay failed")
    assert second["waiting_behind"] is None
    assert third["waiting_behind"] == second["event_id"]
    assert await notes(sessionmaker) == ["a-1"]


async def _parked_count(
    sessionmaker: async_sessionmaker[AsyncSession], count: int
) -> list[dict[str, Any]]:
    rows = await list_parked(sessionmaker)
    return rows if len(rows) == count else []


async def test_stop_finishes_the_handler_running_and_hands_back_the_rest(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    holding = HoldingConsumer(Consumer("stop-test"), held="slow")
    consumer = holding.consumer
    ticket = uuid.uuid4()
    await ensure_stream(jetstream)
    # Both sent first, so the runner has both in hand (one fetch) when it stops.
    await send(jetstream, "slow", envelope=ticket_event(ticket, "slow"))
    await send(jetstream, "queued", envelope=ticket_event(ticket, "queued", 1))
    runner = ConsumerRunner(consumer, jetstream, sessionmaker)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(holding.entered.wait(), 10)
    runner.stop()
    holding.release.set()
    await asyncio.wait_for(task, 10)
    assert await notes(sessionmaker) == ["slow"]  # finished, not cut off
    # The queued one was handed back: the next runner has it well before ack_wait (30s) ends.
    async with running(consumer, jetstream, sessionmaker):
        await eventually(lambda: _notes_are(sessionmaker, ["slow", "queued"]), timeout=15)


async def _terminate_backend(engine: AsyncEngine, pid: int, *, once_running: str = "") -> None:
    """Kill the backend ``pid`` from another connection (as a PostgreSQL restart would), once
    it runs a statement containing ``once_running`` if one is given."""
    async with engine.connect() as conn:
        if once_running:

            async def running_it() -> bool:
                query = await conn.scalar(
                    text(
                        "SELECT query FROM pg_stat_activity WHERE pid = :pid AND state = 'active'"
                    ),
                    {"pid": pid},
                )
                await conn.rollback()  # a fresh snapshot of pg_stat_activity each time
                return once_running in (query or "")

            await eventually(running_it, timeout=10)
        assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


@pytest.mark.parametrize(
    "killed",
    [
        "during-a-statement",
        "before-a-statement",
        "before-commit",
        "wrapped-by-handler",
        "in-a-batch",  # before a statement, the first of a batch's handlers
    ],
)
async def test_database_connection_lost_while_a_handler_runs_is_an_outage_never_parked(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    jetstream: JetStreamContext,
    killed: str,
) -> None:
    tries: list[int] = []
    consumer = Consumer("connection-loss-test")

    @consumer.on(TicketCreated)
    async def record(session: AsyncSession, event: TicketCreated) -> None:
        tries.append(1)
        first = len(tries) == 1  # only the first try loses its connection
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        if first and killed == "during-a-statement":
            kill = asyncio.create_task(_terminate_backend(engine, pid, once_running="pg_sleep"))
            try:
                await session.execute(text("SELECT pg_sleep(30)"))
            finally:
                await kill
        if first and killed in ("before-a-statement", "wrapped-by-handler", "in-a-batch"):
            await _terminate_backend(engine, pid)
        try:
            await session.execute(effects.insert().values(note=event.title))
        except DBAPIError as exc:
            if killed == "wrapped-by-handler":  # as service code may, naming its cause
                raise RuntimeError("could not record the ticket") from exc
            raise
        if first and killed == "before-commit":
            await _terminate_backend(engine, pid)

    titles = [f"survives-{n}" for n in range(8 if killed == "in-a-batch" else 1)]
    await _sent_before_the_runner_starts(jetstream, titles)  # fetched together
    # One failure of the handler itself would park it: a lost connection must not count.
    async with running(consumer, jetstream, sessionmaker, max_deliveries=1):
        await eventually(lambda: _notes_are(sessionmaker, titles), timeout=20)
    assert len(tries) > len(titles)
    assert await list_parked(sessionmaker) == []


# Batches: the first tries of events of different entities, ready at once, share a transaction.


async def _sent_before_the_runner_starts(js: JetStreamContext, titles: list[str]) -> None:
    """Sent first, so the runner fetches them together and each is ready at the same time."""
    await ensure_stream(js)
    for title in titles:
        await send(js, title)


async def test_events_ready_together_are_applied_in_one_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    transactions: list[int] = []
    consumer = Consumer("batch-test")

    @consumer.on(TicketCreated)
    async def record(session: AsyncSession, event: TicketCreated) -> None:
        transactions.append(await session.scalar(text("SELECT txid_current()")))
        await session.execute(effects.insert().values(note=event.title))

    titles = [f"t{n:02d}" for n in range(20)]
    await _sent_before_the_runner_starts(jetstream, titles)
    async with running(consumer, jetstream, sessionmaker):
        await eventually(lambda: _notes_are(sessionmaker, titles))
    assert len(transactions) == 20  # one try each
    # Twenty events, of twenty tickets, in one fetch: a handful of transactions, not twenty.
    assert len(set(transactions)) <= 3
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(inbox)) == 20


def transaction_recording_consumer(name: str, transactions: dict[str, int]) -> Consumer:
    """A consumer noting each event's title and the transaction it was applied in."""
    consumer = Consumer(name)

    @consumer.on(TicketCreated)
    async def record(session: AsyncSession, event: TicketCreated) -> None:
        transactions[event.title] = await session.scalar(text("SELECT txid_current()"))
        await session.execute(effects.insert().values(note=event.title))

    return consumer


async def test_events_arriving_after_a_drained_fetch_share_the_next_one(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    """After a fetch that drained the stream, the runner lets more arrive before fetching
    again: events sent one by one meanwhile come together, in one transaction."""
    transactions: dict[str, int] = {}
    consumer = transaction_recording_consumer("pause-test", transactions)
    async with running(consumer, jetstream, sessionmaker, fetch_pause_seconds=1.0):
        await send(jetstream, "first")
        await eventually(lambda: _notes_are(sessionmaker, ["first"]))
        # The runner now pauses for a second (its fetch got one of the many it asked for).
        later = [f"later-{n}" for n in range(5)]
        for title in later:
            await send(jetstream, title)
        await eventually(lambda: _notes_are(sessionmaker, ["first", *later]))
    assert len({transactions[title] for title in later}) == 1


async def test_a_backlog_is_fetched_without_pauses(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    """Full fetches follow each other at once: with a minute's pause after a drained fetch,
    a backlog of several fetches still drains in seconds."""
    transactions: dict[str, int] = {}
    consumer = transaction_recording_consumer("backlog-test", transactions)
    titles = [f"b{n:03d}" for n in range(150)]  # three fetches of 64 at most
    await _sent_before_the_runner_starts(jetstream, titles)
    async with running(consumer, jetstream, sessionmaker, fetch_pause_seconds=60.0):
        await eventually(lambda: _notes_are(sessionmaker, titles), timeout=15)


async def test_a_failing_handler_is_taken_out_of_its_batch_the_others_applied_once(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    tries: dict[str, int] = {}
    consumer = Consumer("batch-failure-test")

    @consumer.on(TicketCreated)
    async def record(session: AsyncSession, event: TicketCreated) -> None:
        tries[event.title] = tries.get(event.title, 0) + 1
        await session.execute(effects.insert().values(note=event.title))
        if event.title == "poison":  # after writing: its write must not survive
            raise ValueError("cannot handle poison")

    good = [f"good-{n}" for n in range(9)]
    await _sent_before_the_runner_starts(jetstream, [*good[:4], "poison", *good[4:]])
    async with running(consumer, jetstream, sessionmaker, max_deliveries=MAX_DELIVERIES):
        (row,) = await eventually(lambda: list_parked(sessionmaker), timeout=20)
        await eventually(lambda: _notes_are(sessionmaker, good))
    # Each good event applied once (the inbox would drop a second), none of poison's writes.
    assert sorted(await notes(sessionmaker)) == sorted(good)
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(inbox)) == len(good)
    # Its failure in the batch is not counted: only its own tries, alone, are.
    assert row["deliveries"] == MAX_DELIVERIES
    assert tries["poison"] == MAX_DELIVERIES + 1


async def test_a_slow_handler_is_taken_out_of_its_batch_the_others_go_on(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    holding = HoldingConsumer(Consumer("batch-slow-test"), held="slow")
    others = [f"other-{n}" for n in range(9)]
    await _sent_before_the_runner_starts(jetstream, ["slow", *others])
    async with running(holding.consumer, jetstream, sessionmaker, ack_wait_seconds=60):
        await eventually(lambda: _notes_are(sessionmaker, others))
        assert "slow" not in holding.handled_at  # still held, alone now
        holding.release.set()
        await eventually(lambda: _notes_are(sessionmaker, [*others, "slow"]))
    # Slow is not a failure: nothing is parked.
    assert await list_parked(sessionmaker) == []


@dataclass
class BatchHandling:
    """A consumer with a batch handler beside its handler, and what each of them saw."""

    consumer: Consumer = field(default_factory=lambda: Consumer("batch-handler-test"))
    batches: list[list[str]] = field(default_factory=list)  # titles, per batch handler call
    one_at_a_time: dict[str, str | None] = field(default_factory=dict)  # title: request id
    # "raises" after writing, or "leaves copies": returns events it was not given.
    misbehaves: str | None = None

    def __post_init__(self) -> None:
        @self.consumer.on(TicketCreated)
        async def record(session: AsyncSession, event: TicketCreated) -> None:
            self.one_at_a_time[event.title] = request_id_var.get()
            await session.execute(effects.insert().values(note=event.title))

        @self.consumer.on_batch(TicketCreated)
        async def record_several(
            session: AsyncSession, events: list[Received[TicketCreated]]
        ) -> list[Received[TicketCreated]]:
            self.batches.append([received.event.title for received in events])
            taken = [r for r in events if not r.event.title.startswith("left")]
            if taken:
                await session.execute(
                    effects.insert(),
                    [{"note": f"{r.event.title} ({r.request_id})"} for r in taken],
                )
            if self.misbehaves == "raises":  # after writing: its writes must not survive
                raise ValueError("the batch handler fails")
            if self.misbehaves == "leaves copies":  # the runner cannot tell what it left
                return [Received(r.event, r.request_id) for r in events]
            return [r for r in events if r not in taken]


async def test_a_batch_handler_takes_several_events_and_leaves_the_rest_to_their_handler(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> None:
    handling = BatchHandling()
    taken = [f"taken-{n}" for n in range(8)]
    left = ["left-1", "left-2"]
    await _sent_before_the_runner_starts(jetstream, [*taken[:4], *left, *taken[4:]])
    expected = [f"{title} (req-{title})" for title in taken] + left
    async with running(handling.consumer, jetstream, sessionmaker):
        await eventually(lambda: _sorted_notes_are(sessionmaker, expected))
    # Several at once (only the batch handler writes the request id), each with its own; what
    # it left went to the events' handler, with theirs; the rest never did.
    assert set(taken) <= {title for batch in handling.batches for title in batch}
    assert handling.one_at_a_time == {title: f"req-{title}" for title in left}
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(inbox)) == 10


@pytest.mark.parametrize("misbehaves", ["raises", "leaves copies"])
async def test_a_failing_batch_handler_sends_its_events_alone_to_their_own_handler(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext, misbehaves: str
) -> None:
    handling = BatchHandling(misbehaves=misbehaves)
    titles = [f"t{n}" for n in range(10)]
    await _sent_before_the_runner_starts(jetstream, titles)
    # One failure of its own would park an event: the batch's must not count.
    async with running(handling.consumer, jetstream, sessionmaker, max_deliveries=1):
        await eventually(lambda: _sorted_notes_are(sessionmaker, titles))
    # The batch's writes rolled back; each event applied once, by its own handler, and none
    # counted as a failure.
    assert handling.batches
    assert sorted(await notes(sessionmaker)) == titles
    assert handling.one_at_a_time == {title: f"req-{title}" for title in titles}
    assert await list_parked(sessionmaker) == []


async def _sorted_notes_are(
    sessionmaker: async_sessionmaker[AsyncSession], expected: list[str]
) -> bool:
    return sorted(await notes(sessionmaker)) == sorted(expected)


def test_a_batch_handler_needs_the_handler_of_its_events_first() -> None:
    consumer = Consumer("no-handler")
    with pytest.raises(ValueError, match="on\\(\\) first"):

        @consumer.on_batch(TicketCreated)
        async def several(
            session: AsyncSession, events: list[Received[TicketCreated]]
        ) -> list[Received[TicketCreated]]:
            return events


@pytest.mark.parametrize("together", [True, False], ids=["in-a-batch", "alone"])
async def test_an_entity_parked_elsewhere_has_its_later_events_parked_behind(
    sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext, together: bool
) -> None:
    """Parked by another replica, or before a restart: no later event of that entity is
    applied here, whether it comes with others' events or alone; it waits behind."""
    ticket_a = uuid.uuid4()
    first = ticket_event(ticket_a, "a-1")
    raw = first.model_dump(mode="json", by_alias=True)
    await park(
        sessionmaker,
        Parkable(first.id, "ticket.created", raw, {}, f"ticket:{ticket_a}"),
        error="failed elsewhere",
        failures=MAX_DELIVERIES,
    )
    others = [f"b-{n}" for n in range(5)] if together else []
    await _sent_before_the_runner_starts(jetstream, others)
    await send(jetstream, "a-2", envelope=ticket_event(ticket_a, "a-2", 1))
    async with running(consumer := make_consumer(set(), set(), []), jetstream, sessionmaker):
        rows = await eventually(lambda: _parked_count(sessionmaker, 2), timeout=20)
        await eventually(lambda: _notes_are(sessionmaker, others))
        await send(jetstream, "b-last")  # applied after a-2 was settled: nothing else comes
        await eventually(lambda: _notes_are(sessionmaker, [*others, "b-last"]))
    assert [row["waiting_behind"] for row in rows] == [None, first.id]
    assert "a-2" not in await notes(sessionmaker)
    # Replayed, the entity's events apply in order.
    assert await consumer.replay(sessionmaker, first.id) is True
    assert [n for n in await notes(sessionmaker) if n.startswith("a-")] == ["a-1", "a-2"]
