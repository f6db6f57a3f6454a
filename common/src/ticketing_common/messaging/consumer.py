"""Durable JetStream pull consumers with idempotent handlers, in entity order.

A service declares one :class:`Consumer` (its durable name) and registers a handler per event
type. The :class:`ConsumerRunner` fetches, and for each message runs the handler and writes the
event id to the ``inbox`` in one transaction, then acks: an event id seen before is acked
without effect.

Order: each event has an entity key (``events.catalog.entity_key``). The events of one key are
handled one at a time, in the order they were fetched (stream order); those of different keys
concurrently, in at most ``concurrency`` transactions at once. The runner keeps the messages in
hand (up to ``max(4 * concurrency, 2 * batch_size)``) and tells JetStream that those held for a
while are still in progress, so none is handed to another replica meanwhile.

Batches: an event's first try shares its transaction with the first tries of other entities'
events that are ready at the same moment (up to ``batch_size``): one ``BEGIN``, one inbox
``INSERT`` for all, each handler in turn, one ``COMMIT``. A transaction per event was the
consumer's main cost. After a fetch that drained the stream the runner waits a moment
(``FETCH_PAUSE_SECONDS``) before the next, so that events arriving one by one still come
several to a batch; after a full fetch (a backlog) it fetches again at once. The batch is all
or nothing, so a handler that raises, or runs past ``BATCH_HANDLER_SECONDS`` (stuck, say), is
taken out and the others are applied together again without it; the one taken out is tried
alone at once, where its outcome is told apart and counted as below. So a handler stuck on one
ticket holds up that ticket's later events only (others for a second at most). Under light
load a batch is one event, which goes alone.

A handler's statement, a round trip through the session, costs more CPU than the runner spends
on an event of a batch, so a service may also register a batch handler for a subject
(``on_batch``): in a batch holding several events of that subject, it applies the usual case
for all of them in a few statements (one lock statement for every row, one multi-row change,
one outbox insert) and leaves the rest to the events' own handlers, in the same transaction. If
it raises, its events are all taken out of the batch and each goes alone, where only its own
handler runs.

Retries are counted honestly, in the runner: only failures of the handler itself count toward
parking, a handler that runs past its time budget included. After ``max_deliveries`` of them
the event is parked in ``parked_events`` (and acked), and the later events of its entity are
parked behind it (see ``messaging.parking``). Each unit of work looks its events' entities up
there in the statement that records them in the inbox: an event whose entity is parked is
rolled back (its batch goes on without it) and takes the locked check, as does one tried
before. Two other outcomes are retried with backoff, uncounted, for as long as their cause
lasts:

- "not yet" (:class:`RetryLater`, say a version from the future): the event steps aside, so
  the entity's events behind it (maybe the missing version) are tried first;
- an outage of what the handler depends on (the database restarting or its connection lost,
  or a :class:`TemporaryFailure` such as a payment provider that is down) says nothing about the
  event: it stays first in line.

The count lives in the runner: a restart starts it again, which may retry a failing event
longer but never parks one early. A message fired by a JetStream schedule whose subject is
not a scheduled one in the catalog is dropped (the server does not check what a publisher may
schedule). If the stream or the consumer vanishes (a NATS store rebuilt), the runner creates
them again. On stop, the handlers running finish; every other message in hand is handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError
from pydantic import ValidationError
from sqlalchemy import Text, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ticketing_common.db import DriverStatement, connection_lost, transaction
from ticketing_common.events import Event, EventEnvelope, Subject
from ticketing_common.events.catalog import entity_key, scheduled_subjects
from ticketing_common.messaging.parking import Parkable, park, park_if_held, replay_parked
from ticketing_common.messaging.streams import STREAM_NAME, ensure_stream
from ticketing_common.messaging.tables import inbox, parked_events
from ticketing_common.observability import REQUEST_ID_HEADER, request_id_var

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
Handler = Callable[[AsyncSession, Any], Awaitable[None]]


@dataclass(frozen=True)
class Received(Generic[E]):
    """An event handed to a batch handler, with the id of the request that caused it (for
    the events it causes: ``Outgoing(..., request_id=received.request_id)``)."""

    event: E
    request_id: str | None


BatchHandler = Callable[[AsyncSession, list[Any]], Awaitable[list[Any]]]

# How long a pull request waits for messages; the server holds it that long.
FETCH_SECONDS = 5.0
# After a fetch that drained the stream (fewer messages than asked for), how long to let more
# arrive before the next: they then share a fetch, a transaction and a batch handler's
# statements, which costs less than the pause adds. A fetch that came back full (a backlog) is
# followed at once.
FETCH_PAUSE_SECONDS = 0.02
# Set by JetStream on a message fired from a schedule.
SCHEDULER_HEADER = "Nats-Scheduler"
# A handler running longer than this in a batch is taken out of it (and tried alone, with the
# whole budget): the others are not held up by it. Handlers take milliseconds.
BATCH_HANDLER_SECONDS = 1.0


class RetryLater(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised by a handler when the event cannot be applied yet; it is retried later."""


class TemporaryFailure(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised (or subclassed) for a dependency that is down: retried until it is back."""


def _is_outage(exc: BaseException) -> bool:
    """A failure of a dependency rather than of the handler (the runner's own time budget is
    told apart before this is asked). The chain of causes (``raise ... from``) is asked too:
    SQLAlchemy wraps the driver's error, and a handler may wrap it again. Not ``__context__``:
    an error raised while handling an outage is the handler's own."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if _is_outage_itself(cause):
            return True
        cause = cause.__cause__
    return False


def _is_outage_itself(exc: BaseException) -> bool:
    if isinstance(exc, TemporaryFailure | OperationalError | InterfaceError | OSError):
        return True
    # The database out of reach, or no pooled connection free in time.
    return connection_lost(exc) or (
        type(exc).__name__ == "TimeoutError" and "QueuePool" in str(exc)
    )


@dataclass(frozen=True)
class _Registration:
    event_type: type[Event]
    handler: Handler


class Consumer:
    """A service's durable consumer: its name and a handler per subject."""

    def __init__(self, durable_name: str) -> None:
        self.durable_name = durable_name
        self.handlers: dict[Subject, _Registration] = {}
        self.batch_handlers: dict[Subject, BatchHandler] = {}

    def on(
        self, event_type: type[E]
    ) -> Callable[[Callable[[AsyncSession, E], Awaitable[None]]], Handler]:
        def register(handler: Callable[[AsyncSession, E], Awaitable[None]]) -> Handler:
            self.handlers[event_type.subject] = _Registration(event_type, handler)
            return handler

        return register

    def on_batch(
        self, event_type: type[E]
    ) -> Callable[
        [Callable[[AsyncSession, list[Received[E]]], Awaitable[list[Received[E]]]]], BatchHandler
    ]:
        """Register a handler for several events of a type at once, beside its handler ``on``
        (registered first): it applies the usual case in a few statements for all of them and
        returns those it left, which the one-at-a-time handler then takes, in the same
        transaction. It is asked only when a batch holds two or more of them."""

        def register(
            handler: Callable[[AsyncSession, list[Received[E]]], Awaitable[list[Received[E]]]],
        ) -> BatchHandler:
            if event_type.subject not in self.handlers:
                raise ValueError(f"register the handler of {event_type.subject} with on() first")
            self.batch_handlers[event_type.subject] = handler
            return handler

        return register

    @property
    def subjects(self) -> list[str]:
        return sorted(subject.value for subject in self.handlers)

    def read(self, raw: str | bytes | dict[str, Any]) -> tuple[EventEnvelope, Event, Handler]:
        """The envelope, its event and the handler for it; ValueError if malformed."""
        try:
            if isinstance(raw, dict):
                envelope = EventEnvelope.model_validate(raw)
            else:
                envelope = EventEnvelope.model_validate_json(raw)
            registration = self.handlers[envelope.subject]
            return (
                envelope,
                registration.event_type.model_validate(envelope.data),
                (registration.handler),
            )
        except (ValidationError, KeyError) as exc:
            raise ValueError(f"malformed event: {exc!r}") from exc

    async def replay(
        self, sessionmaker: async_sessionmaker[AsyncSession], event_id: uuid.UUID
    ) -> bool:
        """Replay a parked event and those of its entity waiting behind it, in order."""

        async def apply(raw: dict[str, Any]) -> None:
            await apply_once(sessionmaker, _Unit(*self.read(raw)))

        return await replay_parked(sessionmaker, event_id, apply)


def retry_delay(attempts: int) -> float:
    """Backoff between retries: 0.25s, 0.5s, 1s, ... up to 30s."""
    return float(min(0.25 * 2 ** max(attempts - 1, 0), 30.0))


class _Outcome(enum.Enum):
    DONE = enum.auto()
    NOT_YET = enum.auto()
    OUTAGE = enum.auto()
    FAILED = enum.auto()
    HELD = enum.auto()  # its entity is parked: the locked check decides


class _EntityParked(Exception):  # noqa: N818 - it is a signal, not an error
    """Units (by index) whose entity the inbox statement found parked: rolled back."""

    def __init__(self, indexes: list[int]) -> None:
        super().__init__(indexes)
        self.indexes = indexes


@dataclass
class _InHand:
    """A fetched message the runner holds until it is acked, parked or handed back."""

    msg: Msg
    envelope: EventEnvelope
    event: Event
    handler: Handler
    headers: dict[str, str]
    key: str  # the entity's
    held_since: float  # loop time it was fetched
    # Take the locked parked check before the next try: its unit of work found its entity
    # parked, or it was tried before (time has passed; another replica may have parked it).
    check_parked: bool = False
    tries: int = 0  # only a first try may share a transaction with others
    failures: int = 0  # of the handler itself: these count toward parking
    waits: int = 0  # "not yet" and outages: these only pace the retries
    not_before: float = 0.0  # loop time of the next try
    aside: bool = False  # "not yet": the events behind it may go first
    last_error: str = field(default="")

    def parkable(self) -> Parkable:
        return Parkable(
            self.envelope.id,
            self.envelope.subject.value,
            json.loads(self.msg.data),
            self.headers,
            self.key,
        )

    def retry_after(self, delay: float, *, counted: bool) -> None:
        if not counted:
            self.waits += 1
        self.check_parked = True
        self.not_before = asyncio.get_running_loop().time() + delay


class _Lane:
    """One entity's events in hand, in the order they came, and the wake-up of its worker."""

    def __init__(self) -> None:
        self.items: deque[_InHand] = deque()
        self._changed = asyncio.Event()

    def add(self, item: _InHand) -> None:
        self.items.append(item)
        self._changed.set()

    def next_ready(self, now: float) -> tuple[_InHand | None, float]:
        """The first event due a try, passing those set aside as "not yet"; else how long
        until one is due. An event waiting out a failure or an outage holds those behind it."""
        due = float("inf")
        for item in self.items:
            if item.not_before <= now:
                return item, 0.0
            due = min(due, item.not_before - now)
            if not item.aside:
                break
        return None, due

    async def wait(self, seconds: float) -> None:
        """Until ``seconds`` pass, an event arrives or the runner stops."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    def step_aside(self, item: _InHand) -> None:
        """ "Not yet": behind the others, for what it waits for may be among them."""
        item.aside = True
        self.items.remove(item)
        self.items.append(item)

    def something_applied(self) -> None:
        """What an event set aside waits for may have come: try them again now."""
        for item in self.items:
            if item.aside:
                item.not_before = 0.0

    def wake(self) -> None:
        self._changed.set()


class ConsumerRunner:
    def __init__(
        self,
        consumer: Consumer,
        js: JetStreamContext,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        max_deliveries: int = 8,
        ack_wait_seconds: float = 30.0,
        concurrency: int = 8,
        batch_size: int = 64,
        stream_replicas: int = 1,
        fetch_pause_seconds: float = FETCH_PAUSE_SECONDS,
    ) -> None:
        self.consumer = consumer
        self._js = js
        self._sessionmaker = sessionmaker
        self._max_failures = max_deliveries
        self._ack_wait = ack_wait_seconds
        # A handler's time budget: well inside ack_wait, even if one progress signal is lost.
        self._handler_timeout = ack_wait_seconds / 2
        # Transactions running at once, a batch's or a single event's.
        self._transactions = asyncio.Semaphore(concurrency)
        self._batch_size = batch_size
        self._fetch_pause = fetch_pause_seconds
        # Room for a batch in hand while the next is fetched.
        self._capacity = max(4 * concurrency, 2 * batch_size)
        # First tries waiting for a transaction to share, each with the future of its outcome.
        self._gathering: list[tuple[_InHand, _Unit, asyncio.Future[bool]]] = []
        self._stream_replicas = stream_replicas
        self._scheduled = {subject.value for subject in scheduled_subjects()}
        self._stopping = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._in_hand: dict[int, _InHand] = {}  # by id(msg): a Msg is not hashable
        self._lanes: dict[str, _Lane] = {}
        # Entities this runner parked an event of: their later events always take the locked
        # check first.
        self._parked_here: set[str] = set()
        self._workers: set[asyncio.Task[None]] = set()

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.consumer.durable_name,
            filter_subjects=self.consumer.subjects,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            # Unlimited on the server: the runner counts failures and parks an event itself.
            max_deliver=-1,
            max_ack_pending=1000,
        )

    async def ensure_consumer(self) -> None:
        await self._js.add_consumer(STREAM_NAME, config=self.consumer_config())

    def stop(self) -> None:
        self._stopping.set()
        for lane in self._lanes.values():
            lane.wake()

    async def run(self) -> None:
        """Fetch and dispatch until stopped, then let the running handlers finish and hand
        back every other message in hand."""
        sub = await self._first_subscription()
        if sub is None:
            return  # stopped before NATS answered
        heartbeat = asyncio.create_task(self._keep_in_progress())
        try:
            await self._fetch_loop(sub)
        finally:
            self.stop()
            if self._workers:
                await asyncio.wait(self._workers)
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        failures = 0
        try:
            while not self._stopping.is_set():
                await self._until(self._room.wait())
                room = self._capacity - len(self._in_hand)
                if self._stopping.is_set() or room <= 0:
                    continue
                asked = min(room, self._batch_size)
                fetch = asyncio.ensure_future(sub.fetch(asked, timeout=FETCH_SECONDS))
                if not await self._until(fetch):
                    break
                try:
                    messages = fetch.result()
                    failures = 0
                except (TimeoutError, NatsTimeoutError):
                    continue
                except Exception as exc:
                    failures += 1
                    log.warning("fetch failed (%d in a row), retrying: %r", failures, exc)
                    await self._pause(min(failures, 5))
                    if isinstance(exc, NotFoundError | ServiceUnavailableError):
                        sub = await self._resubscribe(sub)
                    continue
                await self._dispatch(messages)
                if len(messages) < asked and self._fetch_pause:
                    await self._pause(self._fetch_pause)
        finally:
            stop_wait.cancel()

    async def _until(self, awaitable: Awaitable[Any]) -> bool:
        """Await ``awaitable`` unless a stop comes first (then cancel it): True if it finished."""
        task = asyncio.ensure_future(awaitable)
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if task in done:
            return True
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by a stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _first_subscription(self) -> JetStreamContext.PullSubscription | None:
        """Make the durable consumer and bind to it, retried while NATS does not answer (a
        service started, or restarted, during a NATS outage); None if stopped first. JetStream
        refusing the consumer is a bug, not an outage: raised, and the service is unhealthy."""
        failures = 0
        while not self._stopping.is_set():
            try:
                return await self._subscribe()
            except Exception as exc:
                if isinstance(exc, APIError) and not isinstance(exc, ServiceUnavailableError):
                    raise
                failures += 1
                log.warning(
                    "cannot make the consumer yet (%d in a row), retrying: %r", failures, exc
                )
                await self._pause(min(failures, 5))
        return None

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        await self.ensure_consumer()
        return await self._js.pull_subscribe_bind(
            durable=self.consumer.durable_name, stream=STREAM_NAME
        )

    async def _resubscribe(
        self, sub: JetStreamContext.PullSubscription
    ) -> JetStreamContext.PullSubscription:
        """The consumer (or the whole stream) is gone: make both again."""
        try:
            await ensure_stream(self._js, self._stream_replicas)
            new_sub = await self._subscribe()
        except Exception as exc:
            log.warning("cannot recreate the stream or consumer yet: %r", exc)
            return sub
        log.warning("recreated consumer %s", self.consumer.durable_name)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return new_sub

    async def _keep_in_progress(self) -> None:
        """Restart the ack timer of each message held a third of ack_wait or longer, so
        JetStream keeps it with us. A timer, not a signal per message: most are settled well
        before, and each tick catches the rest with two thirds of their time still to go."""
        period = self._ack_wait / 3
        while True:
            await asyncio.sleep(period)
            held_since = asyncio.get_running_loop().time() - period
            for item in list(self._in_hand.values()):
                if item.held_since <= held_since:
                    with contextlib.suppress(Exception):
                        await item.msg.in_progress()

    async def _dispatch(self, messages: list[Msg]) -> None:
        """Put each fetched message in its entity's lane."""
        for msg in messages:
            try:
                if (item := await self._read(msg)) is not None:
                    self._enqueue(item)
            except Exception:
                # Never let one message end the loop; it comes back after ack_wait.
                log.exception("could not dispatch a message")

    async def _read(self, msg: Msg) -> _InHand | None:
        """The message as an event in hand; None for one dropped or parked unread."""
        headers = dict(msg.headers or {})
        if SCHEDULER_HEADER in headers and msg.subject not in self._scheduled:
            log.warning(
                "dropped %s fired by schedule %s: not a scheduled subject",
                msg.subject,
                headers[SCHEDULER_HEADER],
            )
            await msg.ack()
            return None
        try:
            envelope, event, handler = self.consumer.read(msg.data)
        except ValueError as exc:
            # Nothing will ever make a malformed event valid: park it at once.
            await self._park_unreadable(msg, headers, str(exc))
            return None
        loop_time = asyncio.get_running_loop().time()
        item = _InHand(msg, envelope, event, handler, headers, entity_key(event), loop_time)
        self._in_hand[id(msg)] = item
        if len(self._in_hand) >= self._capacity:
            self._room.clear()
        return item

    def _enqueue(self, item: _InHand) -> None:
        """Put an event in its entity's lane, starting the lane if it is idle."""
        key = item.key
        lane = self._lanes.get(key)
        if lane is not None:
            lane.add(item)
            return
        self._lanes[key] = lane = _Lane()
        lane.add(item)
        worker = asyncio.create_task(self._work(key, lane))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    async def _work(self, key: str, lane: _Lane) -> None:
        """Handle one entity's events in order until its lane is empty (or the runner stops)."""
        try:
            while lane.items and not self._stopping.is_set():
                item, wait = lane.next_ready(asyncio.get_running_loop().time())
                if item is None:
                    await lane.wait(wait)
                    continue
                try:
                    settled = await self._step(key, lane, item)
                except Exception:
                    log.exception("event %s: could not settle it", item.envelope.id)
                    settled = False
                    item.retry_after(retry_delay(item.waits + 1), counted=False)
                if settled:
                    lane.items.remove(item)
                    self._release(item.msg)
        finally:
            del self._lanes[key]
            for item in lane.items:  # stopping: hand the rest back for another replica
                with contextlib.suppress(Exception):
                    # Not to this replica's pull request, which the server may still hold.
                    await item.msg.nak(delay=FETCH_SECONDS)
                self._release(item.msg)

    async def _step(self, key: str, lane: _Lane, item: _InHand) -> bool:
        """One try at an event of a lane: True once it is acked or parked."""
        checked = item.check_parked or key in self._parked_here
        if checked and await park_if_held(self._sessionmaker, item.parkable()):
            await item.msg.ack()
            return True
        outcome = await self._attempt(item, checked=checked)
        if outcome is _Outcome.DONE:
            await item.msg.ack()
            lane.something_applied()
            return True
        if outcome is _Outcome.FAILED and item.failures >= self._max_failures:
            await self._park(item)
            return True
        if outcome is _Outcome.HELD:
            item.not_before = 0.0  # the locked check, at once
        elif outcome is _Outcome.NOT_YET:
            lane.step_aside(item)
            item.retry_after(retry_delay(item.waits + 1), counted=False)
        elif outcome is _Outcome.OUTAGE:
            item.retry_after(retry_delay(item.waits + 1), counted=False)
        else:
            item.retry_after(retry_delay(item.failures), counted=True)
        return False

    async def _attempt(self, item: _InHand, *, checked: bool) -> _Outcome:
        """Run the handler once, within its time budget, and say how it went: a first try
        together with others if it can, else (or if it was taken out) alone. ``checked``: the
        locked parked check was just taken, so the unit of work does not look again."""
        item.tries += 1
        unit = _unit(item, checked=checked)
        if item.tries == 1 and await self._together(item, unit):
            return _Outcome.DONE
        if item.check_parked and not checked:  # found parked in the batch
            return _Outcome.HELD
        envelope = item.envelope
        token = request_id_var.set(item.headers.get(REQUEST_ID_HEADER))
        budget = asyncio.timeout(self._handler_timeout)
        try:
            async with self._transactions, budget:
                await apply_once(self._sessionmaker, unit)
            item.waits = 0
            return _Outcome.DONE
        except _EntityParked:
            item.check_parked = True
            return _Outcome.HELD
        except RetryLater as exc:
            log.info("event %s %s not yet: %r", envelope.subject, envelope.id, exc)
            return _Outcome.NOT_YET
        except Exception as exc:
            if not budget.expired() and _is_outage(exc):
                log.warning(
                    "event %s %s: dependency unavailable, retrying: %r",
                    envelope.subject,
                    envelope.id,
                    exc,
                )
                return _Outcome.OUTAGE
            item.failures += 1
            item.last_error = (
                f"handler ran past its {self._handler_timeout:g}s budget"
                if budget.expired()
                else repr(exc)
            )
            log.warning(
                "handler for %s %s failed (%d of %d): %s",
                envelope.subject,
                envelope.id,
                item.failures,
                self._max_failures,
                item.last_error,
                exc_info=not budget.expired(),
            )
            return _Outcome.FAILED
        finally:
            request_id_var.reset(token)

    async def _together(self, item: _InHand, unit: _Unit) -> bool:
        """Wait for a transaction shared with the other first tries ready now: True once
        applied in it; False to be tried alone (a batch of one, or taken out of a batch)."""
        applied: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._gathering.append((item, unit, applied))
        if len(self._gathering) == 1:
            self._start(self._run_batch())
        return await applied

    def _start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._workers.add(task)  # awaited on stop, like the lanes
        task.add_done_callback(self._workers.discard)

    async def _run_batch(self) -> None:
        """Take a transaction slot, then every first try gathered meanwhile (the lanes of a
        fetched batch all reach here in one turn of the loop), and apply them together."""
        async with self._transactions:
            batch = self._gathering[: self._batch_size]
            del self._gathering[: self._batch_size]
            if self._gathering:
                self._start(self._run_batch())
            applied: set[int] = set()
            if len(batch) > 1:
                try:
                    together = [(item, unit) for item, unit, _ in batch]
                    applied = {id(item) for item in await self._apply_together(together)}
                except Exception:
                    log.exception("a batch of %d events could not be applied", len(batch))
        for item, _, outcome in batch:
            outcome.set_result(id(item) in applied)

    async def _apply_together(self, batch: list[tuple[_InHand, _Unit]]) -> list[_InHand]:
        """Apply a batch in one transaction; the events applied are returned. Those of a
        parked entity are taken out (for the locked check), and so is a handler that raises or
        runs long, and the rest tried again; a failure no handler can be blamed for (the inbox
        insert, the commit, the database gone) leaves them all to be tried alone."""
        while len(batch) > 1:
            running = _Running()
            try:
                async with asyncio.timeout(self._handler_timeout):
                    async with transaction(self._sessionmaker) as session:
                        await _apply_in(
                            session,
                            [unit for _, unit in batch],
                            running=running,
                            handler_seconds=BATCH_HANDLER_SECONDS,
                            batch_handlers=self.consumer.batch_handlers,
                        )
                return [item for item, _ in batch]
            except _EntityParked as held:
                for index in held.indexes:
                    batch[index][0].check_parked = True
                batch = [pair for i, pair in enumerate(batch) if i not in held.indexes]
            except Exception as exc:
                if not running.indexes:
                    log.info("a batch of %d events failed, each goes alone: %r", len(batch), exc)
                    return []
                log.info(
                    "events %s taken out of a batch of %d, each goes alone: %r",
                    ", ".join(str(batch[i][0].envelope.id) for i in running.indexes),
                    len(batch),
                    exc,
                )
                batch = [pair for i, pair in enumerate(batch) if i not in running.indexes]
        return []

    async def _park(self, item: _InHand) -> None:
        await park(
            self._sessionmaker, item.parkable(), error=item.last_error, failures=item.failures
        )
        self._parked_here.add(item.key)
        await item.msg.ack()

    async def _park_unreadable(self, msg: Msg, headers: dict[str, str], error: str) -> None:
        try:
            raw: dict[str, Any] = json.loads(msg.data)
        except ValueError:
            raw = {"raw": msg.data.decode("utf-8", "replace")}
        unreadable = Parkable(_event_id_of(headers), msg.subject, raw, headers, None)
        await park(self._sessionmaker, unreadable, error=error, failures=1)
        await msg.ack()

    def _release(self, msg: Msg) -> None:
        self._in_hand.pop(id(msg), None)
        if len(self._in_hand) < self._capacity:
            self._room.set()


@dataclass(frozen=True)
class _Unit:
    """An event to apply, with its handler and the request id it carries."""

    envelope: EventEnvelope
    event: Event
    handler: Handler
    request_id: str | None = None
    # Its entity, to be found not parked before it applies; None when the locked check was
    # just taken (or for a replay of the parked events themselves).
    unparked_entity: str | None = None


def _unit(item: _InHand, *, checked: bool) -> _Unit:
    return _Unit(
        item.envelope,
        item.event,
        item.handler,
        item.headers.get(REQUEST_ID_HEADER),
        None if checked else item.key,
    )


@dataclass
class _Running:
    """Which units' handler is running (none between handlers): those to blame for a failure,
    one, or the events of a batch handler."""

    indexes: list[int] = field(default_factory=list)


# Built once, its rows as arrays: one prepared statement for a batch of any size. It records
# the events in the inbox and, in the same round trip, finds which of their entities are
# parked: (the event ids recorded now, the parked entities among ``entities``).
_RECORDED = (
    insert(inbox)
    .from_select(
        ["event_id", "subject"],
        select(
            func.unnest(bindparam("event_ids", type_=ARRAY(UUID(as_uuid=True)))),
            func.unnest(bindparam("subjects", type_=ARRAY(Text))),
        ),
    )
    .on_conflict_do_nothing()
    .returning(inbox.c.event_id)
    .cte("recorded")
)
_RECORD_IN_INBOX = DriverStatement(
    select(
        select(func.array_agg(_RECORDED.c.event_id)).scalar_subquery(),
        select(func.array_agg(parked_events.c.entity_key))
        .where(parked_events.c.entity_key == any_(bindparam("entities", type_=ARRAY(Text))))
        .scalar_subquery(),
    )
)


async def apply_once(sessionmaker: async_sessionmaker[AsyncSession], unit: _Unit) -> None:
    """Run the handler and record the event id in one transaction (the unit of work of an
    event); an event id seen before has no effect."""
    async with transaction(sessionmaker) as session:
        await _apply_in(session, [unit])


async def _apply_in(
    session: AsyncSession,
    units: list[_Unit],
    *,
    running: _Running | None = None,
    handler_seconds: float | None = None,
    batch_handlers: dict[Subject, BatchHandler] | None = None,
) -> None:
    """Record the events' ids in the inbox and check their entities (one statement), then
    run the handlers of those seen for the first time, in ``session``'s transaction: first the
    batch handler of each subject with two or more of them, then, in turn, each event's own
    handler for what those left. :class:`_EntityParked` if an entity is parked: the caller
    rolls back."""
    recorded, parked = await _RECORD_IN_INBOX.one(
        session,
        {
            "event_ids": [unit.envelope.id for unit in units],
            "subjects": [unit.envelope.subject.value for unit in units],
            "entities": [unit.unparked_entity for unit in units if unit.unparked_entity],
        },
    )
    if parked:
        held = [i for i, unit in enumerate(units) if unit.unparked_entity in parked]
        if held:
            raise _EntityParked(held)
    first_time = set(recorded or ())
    running = running or _Running()
    waiting: dict[int, _Unit] = {}
    for index, unit in enumerate(units):
        if unit.envelope.id in first_time:
            waiting[index] = unit
        else:
            log.info("event %s already handled, skipping", unit.envelope.id)
    for subject, handler in (batch_handlers or {}).items():
        group = {i: unit for i, unit in waiting.items() if unit.envelope.subject is subject}
        if len(group) < 2:
            continue
        received = {i: Received(unit.event, unit.request_id) for i, unit in group.items()}
        running.indexes = list(group)
        async with asyncio.timeout(handler_seconds):
            left = {id(one) for one in await handler(session, list(received.values()))}
        # What it leaves must be what it was given: anything else would drop an event unseen.
        if not left <= {id(one) for one in received.values()}:
            raise TypeError(f"the batch handler of {subject} left events it was not given")
        running.indexes = []
        for i, one in received.items():
            if id(one) not in left:
                del waiting[i]
    for index, unit in waiting.items():
        running.indexes = [index]
        token = request_id_var.set(unit.request_id)
        try:
            async with asyncio.timeout(handler_seconds):
                await unit.handler(session, unit.event)
        finally:
            request_id_var.reset(token)
        running.indexes = []


def _event_id_of(headers: dict[str, str]) -> uuid.UUID:
    try:
        return uuid.UUID(headers.get("Nats-Msg-Id", ""))
    except ValueError:
        return uuid.uuid4()
