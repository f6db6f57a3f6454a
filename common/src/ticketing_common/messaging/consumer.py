"""Durable JetStream pull consumers with idempotent handlers.

A service declares one :class:`Consumer` (its durable name) and registers a handler per event
type. The :class:`ConsumerRunner` fetches, and for each message runs the handler and writes the
event id to the ``inbox`` in one transaction, then acks: an event id seen before is acked
without effect. A handler may raise :class:`RetryLater` ("not yet", e.g. a version from the
future): the message is nacked with a delay. Any other failure of the handler is retried with
backoff; after ``max_deliveries`` the event is parked in ``parked_events`` (and acked) so it
never blocks the stream, where ``parked`` commands list and replay it.

A failure of what the handler depends on (the database, or a :class:`TemporaryFailure` such as a
payment provider that is down) says nothing about the event: it is retried with backoff for as
long as it takes and never parked, so an outage does not turn healthy events into parked ones.
A message is marked in progress before its handler runs and the handler is given at most
``ack_wait / 2``, so JetStream does not hand it to another replica meanwhile. If the stream or
the consumer vanishes (a NATS store rebuilt), the runner creates them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError
from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ticketing_common.db import transaction
from ticketing_common.events import Event, EventEnvelope, Subject
from ticketing_common.messaging.streams import STREAM_NAME, ensure_stream
from ticketing_common.messaging.tables import inbox, parked_events
from ticketing_common.observability import REQUEST_ID_HEADER, request_id_var

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
Handler = Callable[[AsyncSession, Any], Awaitable[None]]


class RetryLater(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised by a handler when the event cannot be applied yet; it is redelivered later."""


class TemporaryFailure(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised (or subclassed) for a dependency that is down: retried until it is back."""


def _is_temporary(exc: BaseException) -> bool:
    if isinstance(exc, TemporaryFailure | OperationalError | InterfaceError | OSError):
        return True
    # A connection lost mid-statement, or no pooled connection free in time.
    return (isinstance(exc, DBAPIError) and exc.connection_invalidated) or (
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

    def on(
        self, event_type: type[E]
    ) -> Callable[[Callable[[AsyncSession, E], Awaitable[None]]], Handler]:
        def register(handler: Callable[[AsyncSession, E], Awaitable[None]]) -> Handler:
            self.handlers[event_type.subject] = _Registration(event_type, handler)
            return handler

        return register

    @property
    def subjects(self) -> list[str]:
        return sorted(subject.value for subject in self.handlers)


def retry_delay(deliveries: int) -> float:
    """Backoff between redeliveries: 0.25s, 0.5s, 1s, ... up to 30s."""
    return float(min(0.25 * 2 ** max(deliveries - 1, 0), 30.0))


class ConsumerRunner:
    def __init__(
        self,
        consumer: Consumer,
        js: JetStreamContext,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        max_deliveries: int = 8,
        ack_wait_seconds: float = 30.0,
        batch_size: int = 8,
        stream_replicas: int = 1,
    ) -> None:
        self.consumer = consumer
        self._js = js
        self._sessionmaker = sessionmaker
        self._max_deliveries = max_deliveries
        self._ack_wait = ack_wait_seconds
        self._batch_size = batch_size
        self._stream_replicas = stream_replicas
        self._stopping = asyncio.Event()

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.consumer.durable_name,
            filter_subjects=self.consumer.subjects,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            # Unlimited on the server: the runner parks an event itself after max_deliveries.
            max_deliver=-1,
            max_ack_pending=1000,
        )

    async def ensure_consumer(self) -> None:
        await self._js.add_consumer(STREAM_NAME, config=self.consumer_config())

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Fetch and handle until stopped.

        A stop cancels a waiting fetch and finishes the message in hand; the rest of its batch
        is handed back at once for another replica (or the next start).
        """
        sub = await self._subscribe()
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        failures = 0
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(sub.fetch(self._batch_size, timeout=5))
                done, _ = await asyncio.wait(
                    {fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                if fetch not in done:
                    fetch.cancel()
                    with contextlib.suppress(BaseException):
                        await fetch
                    break
                try:
                    messages = fetch.result()
                    failures = 0
                except (TimeoutError, NatsTimeoutError):
                    continue
                except Exception as exc:
                    failures += 1
                    log.warning("fetch failed (%d in a row), retrying: %r", failures, exc)
                    await asyncio.sleep(min(failures, 5))
                    if isinstance(exc, NotFoundError | ServiceUnavailableError):
                        sub = await self._resubscribe(sub)
                    continue
                for index, msg in enumerate(messages):
                    if self._stopping.is_set():
                        await self._hand_back(messages[index:])
                        break
                    try:
                        await self.handle(msg)
                    except Exception:
                        # Never let one message end the loop; it comes back after ack_wait.
                        log.exception("could not handle or settle a message")
        finally:
            stop_wait.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

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

    @staticmethod
    async def _hand_back(messages: list[Msg]) -> None:
        for msg in messages:
            with contextlib.suppress(Exception):
                await msg.nak()

    async def handle(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        token = request_id_var.set(headers.get(REQUEST_ID_HEADER))
        try:
            await self._handle(msg, headers)
        finally:
            request_id_var.reset(token)

    async def _handle(self, msg: Msg, headers: dict[str, str]) -> None:
        deliveries = msg.metadata.num_delivered
        try:
            envelope = EventEnvelope.model_validate_json(msg.data)
            registration = self.consumer.handlers[envelope.subject]
            event = registration.event_type.model_validate(envelope.data)
        except (ValidationError, KeyError, ValueError) as exc:
            # Nothing will ever make a malformed event valid: park it at once.
            await self._park(msg, headers, f"malformed event: {exc!r}", deliveries)
            return
        try:
            await msg.in_progress()  # restart the ack timer: this replica has it now
            async with asyncio.timeout(self._ack_wait / 2):
                await apply_once(self._sessionmaker, envelope, event, registration.handler)
            await msg.ack()
        except RetryLater as exc:
            await self._retry_or_park(msg, headers, exc, deliveries, envelope)
        except Exception as exc:
            if _is_temporary(exc):
                delay = retry_delay(deliveries)
                log.warning(
                    "event %s %s: dependency unavailable, retrying in %.2fs: %r",
                    envelope.subject,
                    envelope.id,
                    delay,
                    exc,
                )
                await msg.nak(delay=delay)
                return
            log.exception(
                "handler for %s %s failed (delivery %d)", envelope.subject, envelope.id, deliveries
            )
            await self._retry_or_park(msg, headers, exc, deliveries, envelope)

    async def _retry_or_park(
        self,
        msg: Msg,
        headers: dict[str, str],
        exc: Exception,
        deliveries: int,
        envelope: EventEnvelope,
    ) -> None:
        if deliveries >= self._max_deliveries:
            await self._park(msg, headers, repr(exc), deliveries, envelope)
            return
        delay = retry_delay(deliveries)
        log.info("event %s %s redelivered in %.2fs: %r", envelope.subject, envelope.id, delay, exc)
        await msg.nak(delay=delay)

    async def _park(
        self,
        msg: Msg,
        headers: dict[str, str],
        error: str,
        deliveries: int,
        envelope: EventEnvelope | None = None,
    ) -> None:
        try:
            raw: dict[str, Any] = json.loads(msg.data)
        except ValueError:
            raw = {"raw": msg.data.decode("utf-8", "replace")}
        event_id = envelope.id if envelope else _event_id_of(headers)
        subject = envelope.subject.value if envelope else msg.subject
        async with transaction(self._sessionmaker) as session:
            await session.execute(
                insert(parked_events)
                .values(
                    event_id=event_id,
                    subject=subject,
                    envelope=raw,
                    headers=headers,
                    error=error[:4000],
                    deliveries=deliveries,
                )
                .on_conflict_do_update(
                    index_elements=[parked_events.c.event_id],
                    set_={"error": error[:4000], "deliveries": deliveries},
                )
            )
        log.error(
            "parked event %s on %s after %d deliveries: %s", event_id, subject, deliveries, error
        )
        await msg.ack()


async def apply_once(
    sessionmaker: async_sessionmaker[AsyncSession],
    envelope: EventEnvelope,
    event: Event,
    handler: Handler,
) -> None:
    """Run the handler and record the event id in one transaction (the unit of work of an
    event); an event id seen before has no effect."""
    async with transaction(sessionmaker) as session:
        first_time = (
            await session.execute(
                insert(inbox)
                .values(event_id=envelope.id, subject=envelope.subject.value)
                .on_conflict_do_nothing()
                .returning(inbox.c.event_id)
            )
        ).first()
        if first_time is None:
            log.info("event %s already handled, skipping", envelope.id)
            return
        await handler(session, event)


async def list_parked(sessionmaker: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    async with sessionmaker() as session:
        rows = await session.execute(select(parked_events).order_by(parked_events.c.parked_at))
        return [dict(row._mapping) for row in rows]


async def replay_parked(
    sessionmaker: async_sessionmaker[AsyncSession], consumer: Consumer, event_id: uuid.UUID
) -> bool:
    """Run a parked event's handler again; on success it leaves the parked table.

    Returns False if the handler failed again (the new error is recorded).
    """
    async with sessionmaker() as session:
        row = (
            await session.execute(select(parked_events).where(parked_events.c.event_id == event_id))
        ).first()
    if row is None:
        raise LookupError(f"no parked event {event_id}")
    token = request_id_var.set(row.headers.get(REQUEST_ID_HEADER))
    try:
        envelope = EventEnvelope.model_validate(row.envelope)
        registration = consumer.handlers[envelope.subject]
        event = registration.event_type.model_validate(envelope.data)
        await apply_once(sessionmaker, envelope, event, registration.handler)
    except Exception as exc:
        async with transaction(sessionmaker) as session:
            await session.execute(
                parked_events.update()
                .where(parked_events.c.event_id == event_id)
                .values(error=f"replay failed: {exc!r}"[:4000])
            )
        return False
    finally:
        request_id_var.reset(token)
    async with transaction(sessionmaker) as session:
        await session.execute(delete(parked_events).where(parked_events.c.event_id == event_id))
    return True


def _event_id_of(headers: dict[str, str]) -> uuid.UUID:
    try:
        return uuid.UUID(headers.get("Nats-Msg-Id", ""))
    except ValueError:
        return uuid.uuid4()
