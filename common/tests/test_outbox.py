"""The outbox: events commit with the state change and reach JetStream exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from nats.js import JetStreamContext
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.db import transaction
from ticketing_common.events import TicketCreated
from ticketing_common.messaging import OutboxRelay, Outgoing, ensure_stream, publish, publish_all
from ticketing_common.messaging import outbox as outbox_module
from ticketing_common.messaging.tables import outbox
from ticketing_common.observability import request_id_var
from ticketing_common.testing import EventProbe
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import NatsServer


def ticket_created(title: str = "Concert") -> TicketCreated:
    return TicketCreated(
        id=uuid.uuid4(), version=0, title=title, price=Decimal("10.50"), user_id=uuid.uuid4()
    )


@dataclass
class Pipeline:
    """The database a service writes its outbox to and the JetStream a relay sends it to."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    jetstream: JetStreamContext
    relays: list[OutboxRelay] = field(default_factory=list)

    def relay(self, **options: Any) -> OutboxRelay:
        relay = OutboxRelay(self.engine, self.jetstream, **options)
        self.relays.append(relay)  # each closes its connection when the test ends
        return relay

    @contextlib.asynccontextmanager
    async def running_relay(
        self, poll_seconds: float = 60.0, *, attached: bool = False
    ) -> AsyncIterator[OutboxRelay]:
        relay = self.relay(poll_seconds=poll_seconds, publish_timeout=1.0)
        if attached:  # as a service runs it: its sessions hand their events over at commit
            relay.attach(self.sessionmaker)
        task = asyncio.create_task(relay.run())
        try:
            yield relay
        finally:
            relay.stop()
            await task


@pytest.fixture
async def pipeline(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], jetstream: JetStreamContext
) -> AsyncIterator[Pipeline]:
    """Its stream made, as a service makes it at start."""
    await ensure_stream(jetstream)
    pipeline = Pipeline(engine, sessionmaker, jetstream)
    yield pipeline
    for relay in pipeline.relays:
        await relay.close()


async def unpublished(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return (
            await session.scalar(
                select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            )
            or 0
        )


async def test_committed_event_is_published_promptly_with_its_id(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    # A 60s poll: only the commit's NOTIFY can wake the relay within the probe's timeout. The
    # second event is committed once the relay is idle (the first went out), in a session whose
    # first statement is the publish.
    async def commit_and_receive(request_id: str) -> None:
        event = ticket_created(request_id)
        request_id_var.set(request_id)
        async with transaction(pipeline.sessionmaker) as session:
            envelope = await publish(session, event)
        request_id_var.set(None)
        received = await event_probe.wait_for(
            "ticket.created", lambda e: e.id == envelope.id, timeout=5
        )
        assert received.event() == event
        msg = await pipeline.jetstream.get_last_msg("EVENTS", "ticket.created")
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == str(envelope.id)
        assert msg.headers["X-Request-Id"] == request_id

    async with pipeline.running_relay(poll_seconds=60):
        await commit_and_receive("req-1")
        await commit_and_receive("req-2")
    assert await unpublished(pipeline.sessionmaker) == 0


async def test_events_published_together_go_out_in_order_each_with_its_request_id(
    pipeline: Pipeline,
) -> None:
    """``publish_all``: one statement for several events (a consumer's batch), each with the
    request id of its own cause, and a subject and headers of its own if given."""
    events = [ticket_created(f"together {n}") for n in range(5)]
    outgoing = [
        Outgoing(event, request_id=f"req-{n}" if n != 2 else None) for n, event in enumerate(events)
    ]
    # A scheduled subject would need a schedule: another subject of the stream shows the same.
    outgoing[3] = Outgoing(
        events[3], nats_subject="ticket.updated", headers={"X-Note": "own"}, request_id="req-3"
    )
    request_id_var.set("the-request-being-handled")  # not theirs: each names its own
    try:
        async with transaction(pipeline.sessionmaker) as session:
            envelopes = await publish_all(session, outgoing)
    finally:
        request_id_var.set(None)
    assert [envelope.event() for envelope in envelopes] == events
    async with pipeline.sessionmaker() as session:
        stored = (await session.execute(select(outbox.c.id).order_by(outbox.c.position))).all()
    assert [row.id for row in stored] == [envelope.id for envelope in envelopes]

    async with pipeline.running_relay(poll_seconds=60):  # woken by the commit's NOTIFY
        await eventually(lambda: _no_unpublished(pipeline.sessionmaker), timeout=5)
    sub = await pipeline.jetstream.pull_subscribe("ticket.*", stream="EVENTS")
    messages = await sub.fetch(5, timeout=5)
    assert [msg.headers["Nats-Msg-Id"] for msg in messages if msg.headers] == [
        str(envelope.id) for envelope in envelopes
    ]
    assert [msg.subject for msg in messages] == [
        "ticket.created",
        "ticket.created",
        "ticket.created",
        "ticket.updated",
        "ticket.created",
    ]
    assert [(msg.headers or {}).get("X-Request-Id") for msg in messages] == [
        "req-0",
        "req-1",
        None,
        "req-3",
        "req-4",
    ]
    assert (messages[3].headers or {})["X-Note"] == "own"


async def _no_unpublished(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    return await unpublished(sessionmaker) == 0


async def test_each_transaction_wakes_the_relay_a_rolled_back_savepoint_notwithstanding(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """The relay is woken once per transaction: a savepoint rolled back takes its wake-up with
    it, and the next event of the transaction must bring one of its own."""

    async def one_transaction(session: AsyncSession, title: str) -> None:
        savepoint = await session.begin_nested()
        await publish(session, ticket_created(f"{title}: dropped"))
        await savepoint.rollback()
        await publish(session, ticket_created(title))
        await publish(session, ticket_created(f"{title}: again"))
        await session.commit()
        await event_probe.wait_for(
            "ticket.created", lambda e: e.data["title"] == f"{title}: again", timeout=5
        )

    # A 60s poll: only the commit's NOTIFY can wake the relay within the probe's timeout.
    async with (
        pipeline.running_relay(poll_seconds=60),
        pipeline.sessionmaker() as session,
    ):
        # One session, a transaction after the other: each must wake the relay.
        await one_transaction(session, "first")
        await one_transaction(session, "second")
    titles = [e.data["title"] for e in await event_probe.all("ticket.created")]
    assert titles == ["first", "first: again", "second", "second: again"]


async def test_rolled_back_transaction_publishes_nothing(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    async with pipeline.running_relay(poll_seconds=0.1) as relay:
        async with pipeline.sessionmaker() as session:
            await publish(session, ticket_created("rolled back"))
            await session.rollback()
        async with transaction(pipeline.sessionmaker) as session:
            await publish(session, ticket_created("committed"))
        await event_probe.wait_for("ticket.created", lambda e: e.data["title"] == "committed")
        await relay.flush()
    titles = [e.data["title"] for e in await event_probe.all("ticket.created")]
    assert titles == ["committed"]


@pytest.mark.parametrize("attached", [False, True], ids=["swept", "handed-over"])
async def test_nats_outage_loses_nothing_and_duplicates_nothing(
    pipeline: Pipeline, nats_server: NatsServer, event_probe: EventProbe, attached: bool
) -> None:
    # Two relays, as two replicas of a service would run; the first one's sessions hand their
    # events over at commit, or not.
    async with (
        pipeline.running_relay(poll_seconds=0.2, attached=attached) as first,
        pipeline.running_relay(poll_seconds=0.2) as second,
    ):
        nats_server.stop()
        committed = []
        for i in range(20):
            async with transaction(pipeline.sessionmaker) as session:
                committed.append((await publish(session, ticket_created(f"t{i}"))).id)

        # Each fails in turn: a sweep that finds every row locked by the other succeeds.
        failed: set[int] = set()

        async def both_relays_tried_and_failed() -> bool:
            failed.update(
                n for n, relay in enumerate((first, second)) if relay.consecutive_failures
            )
            return len(failed) == 2

        await eventually(both_relays_tried_and_failed, timeout=15)
        assert await unpublished(pipeline.sessionmaker) == 20

        nats_server.start()
        await eventually(lambda: _none_left(pipeline.sessionmaker), timeout=30)

    seen = [e.id for e in await event_probe.all("ticket.created")]
    assert sorted(seen) == sorted(committed)  # every one, and each exactly once
    info = await pipeline.jetstream.stream_info("EVENTS")
    assert info.state.messages == 20


async def _none_left(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    return await unpublished(sessionmaker) == 0


async def test_republished_row_is_dropped_by_the_duplicate_window(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """A relay that crashed after publishing but before marking the row sends it again."""
    relay = pipeline.relay()
    async with transaction(pipeline.sessionmaker) as session:
        await publish(session, ticket_created())
    assert await relay.flush() == 1
    async with transaction(pipeline.sessionmaker) as session:  # as if the mark had never committed
        await session.execute(outbox.update().values(published_at=None))
    assert await relay.flush() == 1
    assert len(await event_probe.all("ticket.created")) == 1


@pytest.mark.parametrize("count", [250])
async def test_large_backlog_is_published_in_order(
    pipeline: Pipeline, event_probe: EventProbe, count: int
) -> None:
    async with transaction(pipeline.sessionmaker) as session:
        for i in range(count):
            await publish(session, ticket_created(f"t{i:03}"))
    assert await pipeline.relay().flush() == count
    titles = [e.data["title"] for e in await event_probe.all("ticket.created")]
    assert titles == [f"t{i:03}" for i in range(count)]


async def test_relays_flushing_at_once_share_a_backlog_each_row_sent_by_one(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """Replicas: each claims rows the others have not (skipping locked ones), none twice."""
    count = 600
    async with transaction(pipeline.sessionmaker) as session:
        for i in range(count):
            await publish(session, ticket_created(f"t{i:03}"))
    relays = [pipeline.relay(batch_size=50) for _ in range(4)]
    sent = await asyncio.gather(*(relay.flush() for relay in relays))
    # Every row published by exactly one relay (JetStream's duplicate window would hide a
    # second publish from the stream, not from these counts).
    assert sum(sent) == count
    assert sum(1 for n in sent if n) >= 2  # they did share it
    assert await unpublished(pipeline.sessionmaker) == 0
    assert len(await event_probe.all("ticket.created")) == count


async def test_rows_left_by_a_crashed_service_go_out_when_a_relay_starts(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """Committed, then the process died before its relay sent anything."""
    async with transaction(pipeline.sessionmaker) as session:
        envelope = await publish(session, ticket_created("orphan"))
    async with pipeline.running_relay(poll_seconds=60):
        received = await event_probe.wait_for("ticket.created", timeout=5)
    assert received.id == envelope.id


async def test_a_row_jetstream_refuses_is_set_aside_and_later_rows_flow(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    async with transaction(pipeline.sessionmaker) as session:
        # A schedule JetStream cannot parse: refused on every try.
        (refused,) = await publish_all(
            session,
            [
                Outgoing(
                    ticket_created("bad schedule"),
                    nats_subject="schedule.test.1",
                    headers={
                        "Nats-Schedule": "@at not-a-time",
                        "Nats-Schedule-Target": "ticket.created",
                    },
                )
            ],
        )
        await publish(session, ticket_created("after it"))
    relay = pipeline.relay(max_attempts=3)
    for _ in range(3):
        await relay.flush()
    titles = [e.data["title"] for e in await event_probe.all("ticket.created")]
    assert titles == ["after it"]
    async with pipeline.sessionmaker() as session:
        row = (await session.execute(select(outbox).where(outbox.c.id == refused.id))).one()
    assert row.attempts == 3
    assert row.failed_at is not None and row.published_at is None
    assert "10189" in row.last_error  # JetStream's "invalid schedule" error code
    assert await relay.flush() == 0  # set aside: no longer tried


async def test_relay_recreates_a_deleted_stream(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    await pipeline.jetstream.delete_stream("EVENTS")  # a NATS store rebuilt under a running service
    async with transaction(pipeline.sessionmaker) as session:
        envelope = await publish(session, ticket_created("survivor"))
    assert await pipeline.relay().flush() == 1
    received = await event_probe.wait_for("ticket.created", timeout=5)
    assert received.id == envelope.id


async def test_relay_whose_connection_is_cut_makes_it_again_at_once(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """PostgreSQL restarted, or the relay's backend terminated: the next commit still wakes it
    (long before its poll), on a connection made again and LISTENing."""
    async with pipeline.running_relay(poll_seconds=60):
        async with transaction(pipeline.sessionmaker) as session:
            await publish(session, ticket_created("before"))
        await event_probe.wait_for("ticket.created", lambda e: e.data["title"] == "before")
        async with pipeline.sessionmaker() as session:
            terminated = await session.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'outbox-relay' AND datname = current_database()"
                )
            )
        assert terminated == 1
        async with transaction(pipeline.sessionmaker) as session:
            envelope = await publish(session, ticket_created("after"))
        received = await event_probe.wait_for(
            "ticket.created", lambda e: e.data["title"] == "after", timeout=10
        )
    assert received.id == envelope.id


# Handed over at commit: a service's sessions are attached to its relay.


async def test_an_attached_session_hands_its_events_over_at_commit_with_no_notify(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """Sent at once without a sweep, marked sent; the commit wakes no relay through PostgreSQL
    (a session not attached still does: its NOTIFY, delivered after, shows none came before)."""
    listener = await asyncpg.connect(with_driver(pipeline.engine.url, driver=PLAIN))
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("outbox", lambda *args: heard.put_nowait(args[2]))

    async def commit_and_receive(title: str) -> None:
        request_id_var.set(f"req {title}")
        try:
            async with transaction(pipeline.sessionmaker) as session:
                envelope = await publish(session, ticket_created(title))
        finally:
            request_id_var.set(None)
        received = await event_probe.wait_for(
            "ticket.created", lambda e: e.id == envelope.id, timeout=5
        )
        assert received.id == envelope.id
        await eventually(lambda: _no_unpublished(pipeline.sessionmaker), timeout=5)
        msg = await pipeline.jetstream.get_last_msg("EVENTS", "ticket.created")
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == str(envelope.id)
        assert msg.headers["X-Request-Id"] == f"req {title}"

    try:
        # A 60 s poll: only the hand-over can send within the probe's timeout. The second event
        # comes once the relay is idle, its sweep at start long done.
        async with pipeline.running_relay(poll_seconds=60, attached=True) as relay:
            await commit_and_receive("first")
            before = (relay.sent_at_commit, relay.sent_by_sweep)
            await commit_and_receive("second")
            assert (relay.sent_at_commit, relay.sent_by_sweep) == (before[0] + 1, before[1])
            assert relay.sent_at_commit + relay.sent_by_sweep == 2
        # Not attached: its NOTIFY is the first and only one heard.
        async with transaction(async_sessionmaker(pipeline.engine)) as session:
            await publish(session, ticket_created("not attached"))
        assert await asyncio.wait_for(heard.get(), 5) == "outbox"
        assert heard.empty()
    finally:
        await listener.close()


async def test_events_of_a_savepoint_go_with_the_transaction_and_not_if_rolled_back(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """Handed over when the transaction commits, not when a savepoint is released; never if
    their savepoint, or the transaction, rolls back; nor if the session closes uncommitted."""
    relay = pipeline.relay()
    relay.attach(pipeline.sessionmaker)
    async with pipeline.sessionmaker() as session:
        async with session.begin_nested():
            await publish(session, ticket_created("released"))
        savepoint = await session.begin_nested()
        await publish(session, ticket_created("rolled back"))
        async with session.begin_nested():  # inside the one rolled back
            await publish(session, ticket_created("released inside the rolled back"))
        await savepoint.rollback()
        await publish(session, ticket_created("outer"))
        assert await relay.flush() == 0  # nothing committed, nothing handed over yet
        await session.commit()

        await publish(session, ticket_created("closed uncommitted"))
        await session.close()
        await publish(session, ticket_created("in a transaction rolled back"))
        await session.rollback()
        await publish(session, ticket_created("last"))
        await session.commit()
    assert await relay.flush() == 3
    assert (relay.sent_at_commit, relay.sent_by_sweep) == (3, 0)
    titles = [e.data["title"] for e in await event_probe.all("ticket.created")]
    assert titles == ["released", "outer", "last"]
    assert await unpublished(pipeline.sessionmaker) == 0


async def test_events_handed_over_to_a_relay_that_died_are_swept_by_the_next(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """Committed and handed over, then the process died before sending: in the outbox still."""
    dead = pipeline.relay()
    dead.attach(pipeline.sessionmaker)
    async with transaction(pipeline.sessionmaker) as session:
        envelope = await publish(session, ticket_created("orphan"))
    await dead.close()  # never sends
    async with pipeline.running_relay(poll_seconds=60) as relay:
        received = await event_probe.wait_for("ticket.created", timeout=5)
        assert received.id == envelope.id
        assert relay.sent_by_sweep == 1
    assert await unpublished(pipeline.sessionmaker) == 0


async def test_an_event_swept_while_handed_over_is_stored_once(
    pipeline: Pipeline,
) -> None:
    """A sweep (another replica's) can claim a row between its commit and its hand-over being
    sent: both send it, the duplicate window keeps one, and the sweep's mark stays."""
    attached = pipeline.relay()
    attached.attach(pipeline.sessionmaker)
    async with transaction(pipeline.sessionmaker) as session:
        envelope = await publish(session, ticket_created("twice sent"))
    assert await pipeline.relay().flush() == 1  # the sweep first
    async with pipeline.sessionmaker() as session:
        marked = await session.scalar(select(outbox.c.published_at))
    assert await attached.flush() == 1  # then the hand-over: acked as a duplicate
    info = await pipeline.jetstream.stream_info("EVENTS")
    assert info.state.messages == 1
    stored = await pipeline.jetstream.get_last_msg("EVENTS", "ticket.created")
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == str(envelope.id)
    async with pipeline.sessionmaker() as session:
        assert await session.scalar(select(outbox.c.published_at)) == marked


async def test_a_relay_kept_busy_by_hand_overs_still_sweeps_every_poll(
    pipeline: Pipeline, event_probe: EventProbe
) -> None:
    """Another replica died after a commit, before sending: the row waits for a sweep, which
    comes every poll even while commits wake this relay far more often."""
    async with pipeline.running_relay(poll_seconds=0.5, attached=True):
        other_replica = async_sessionmaker(pipeline.engine)
        pipeline.relay().attach(other_replica)  # dies: never sends
        async with transaction(other_replica) as session:
            orphan = await publish(session, ticket_created("orphan"))

        async def steady_commits() -> None:
            for n in itertools.count():
                async with transaction(pipeline.sessionmaker) as session:
                    await publish(session, ticket_created(f"steady {n}"))
                await asyncio.sleep(0.05)  # 20 commits a second, each a wake-up

        async def orphan_sent() -> bool:
            async with pipeline.sessionmaker() as session:
                marked = await session.scalar(
                    select(outbox.c.published_at).where(outbox.c.id == orphan.id)
                )
            return marked is not None

        committing = asyncio.create_task(steady_commits())
        try:
            await eventually(orphan_sent, timeout=5)
        finally:
            committing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committing
    received = await event_probe.wait_for("ticket.created", lambda e: e.id == orphan.id)
    assert received.data["title"] == "orphan"


async def test_events_handed_over_beyond_the_bound_are_left_to_the_sweep(
    pipeline: Pipeline, event_probe: EventProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay that cannot keep up holds a bounded number in memory; the rest are in the
    outbox, and its next sweep sends them."""
    monkeypatch.setattr(outbox_module, "MAX_HANDED_OVER", 2)
    relay = pipeline.relay()
    relay.attach(pipeline.sessionmaker)
    for n in range(5):
        async with transaction(pipeline.sessionmaker) as session:
            await publish(session, ticket_created(f"t{n}"))
    assert await relay.flush() == 5
    assert (relay.sent_at_commit, relay.sent_by_sweep) == (2, 3)
    titles = sorted(e.data["title"] for e in await event_probe.all("ticket.created"))
    assert titles == [f"t{n}" for n in range(5)]
