"""The transactional outbox.

``publish(session, event)`` (``publish_all`` for several at once) adds the event to the
``outbox`` table in the caller's transaction, so the state change and its events commit (or roll
back) together. Then the relay sends them to JetStream, each with ``Nats-Msg-Id`` = event id (a
row sent twice is dropped by JetStream's duplicate window, and by every inbox). Two ways:

- **Handed over at commit.** A service's sessions are attached to its relay
  (:meth:`OutboxRelay.attach`): as a transaction commits, the events it wrote go to the relay in
  memory, and it sends them at once, awaits their acks together and marks them sent a tenth of
  a second later, all in one statement. No ``NOTIFY``, no claim, no transaction per event: at a
  steady rate, where most commits write one event, PostgreSQL spent about 0.3 ms less on each.
  Events of a savepoint rolled back are never handed over.
- **Swept.** The relay also claims what is committed and unsent, in a transaction (``FOR UPDATE
  SKIP LOCKED``: replicas share the work without taking the same row), sends it and commits the
  marks, unmarking what was not acked; it retries with backoff while NATS is down. It sweeps at
  start, every poll, after a failure, and when woken by a ``NOTIFY``: a session not attached (a
  script, a tool) sends one with its first insert, which PostgreSQL delivers on commit. So what a
  crash or a NATS outage left behind goes out, and a row a sweep takes while it is being handed
  over is sent twice, which the duplicate window absorbs.

What consumers may and may not assume: every committed event arrives, at least once; events of
one service normally arrive in commit order, but a retried publish can land after later ones and
two relay replicas can interleave batches, so handlers rely on versions (and tombstones), never
on arrival order.

A row JetStream refuses for good (a malformed schedule header, say) is retried a few times and
then marked failed (``failed_at``) and logged, so it cannot hold back every later event; an
operator can clear ``failed_at`` to send it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError
from sqlalchemy import Text, bindparam, case, cast, delete, event, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from ticketing_common.database_url import PLAIN, with_driver
from ticketing_common.db import DriverStatement, driver_connection, innermost_transaction
from ticketing_common.events import Event, EventEnvelope
from ticketing_common.messaging.streams import ensure_stream
from ticketing_common.messaging.tables import inbox, outbox
from ticketing_common.observability import REQUEST_ID_HEADER, request_id_var

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "outbox"
# Published rows are kept a while for inspection; handled event ids for longer than the stream
# keeps messages (14 days), so nothing the stream could still redeliver is forgotten.
PUBLISHED_CUTOFF = text("now() - interval '3 days'")
INBOX_CUTOFF = text("now() - interval '30 days'")
PRUNE_EVERY_SECONDS = 600.0
MAX_BACKOFF_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0
# Events handed over by commits and not sent yet, at most: the sweep sends any beyond.
MAX_HANDED_OVER = 10_000
# Events handed over and acked are marked sent together, this long after the first: one
# statement (and one commit on the database) for all that a steady rate sends meanwhile.
MARK_SENT_AFTER_SECONDS = 0.1
# Named, so that an operator tells the relay's connection apart in pg_stat_activity.
_RELAY_SETTINGS = {"application_name": "outbox-relay"}


@dataclass(frozen=True)
class Outgoing:
    """An event for :func:`publish_all`: where it goes (if not to its own subject), with what
    headers, and the request that caused it (its ``X-Request-Id``)."""

    event: Event
    nats_subject: str | None = None
    headers: dict[str, str] | None = None
    request_id: str | None = None


async def publish(session: AsyncSession, event: Event) -> EventEnvelope:
    """Add ``event`` to the outbox in ``session``'s transaction; it is sent after commit, to its
    own subject. It carries the request id of the request (or event) being handled. (An event
    for somewhere else, a JetStream message schedule say, goes as an ``Outgoing``.)"""
    (envelope,) = await publish_all(session, [Outgoing(event, request_id=request_id_var.get())])
    return envelope


async def publish_all(session: AsyncSession, events: Sequence[Outgoing]) -> list[EventEnvelope]:
    """Add several events to the outbox in one statement, in this order (a consumer handling a
    batch of events publishes what they cause with this, each with its cause's request id)."""
    envelopes = [EventEnvelope.wrap(outgoing.event) for outgoing in events]
    messages = [
        _Message(
            envelope.id,
            outgoing.nats_subject or envelope.subject.value,
            envelope.model_dump_json(by_alias=True),
            _headers(outgoing),
        )
        for outgoing, envelope in zip(events, envelopes, strict=True)
    ]
    connection = await driver_connection(session)  # begins the transaction if need be
    relay: OutboxRelay | None = session.info.get(_RELAY)
    # What these rows commit or roll back with, as the session listeners below see it.
    transaction = innermost_transaction(session.sync_session)
    # Not attached to a relay: the (sub)transaction's first statement here also wakes the
    # relays, in the same statement; delivered at commit, and only then. (A savepoint counts
    # apart: rolled back, its NOTIFY is gone.)
    notify = relay is None and session.info.get(_NOTIFIED) is not transaction
    if len(messages) == 1:
        message = messages[0]
        row = {
            "id": message.id,
            "nats_subject": message.nats_subject,
            "envelope": message.envelope,
            "headers": message.headers,
        }
        await (_ADD_ONE_AND_NOTIFY if notify else _ADD_ONE).all_on(connection, row)
    else:
        columns = {
            "ids": [message.id for message in messages],
            "subjects": [message.nats_subject for message in messages],
            "envelopes": [message.envelope for message in messages],
            "headers": [json.dumps(message.headers) for message in messages],
        }
        await (_ADD_SEVERAL_AND_NOTIFY if notify else _ADD_SEVERAL).all_on(connection, columns)
    if relay is None:
        session.info[_NOTIFIED] = transaction
    else:
        # Handed to the relay when the transaction commits; forgotten if this (sub)transaction
        # rolls back (the listeners below).
        session.info.setdefault(_UNSENT, []).append((transaction, messages))
    return envelopes


@dataclass(frozen=True, slots=True)
class _Message:
    """An outbox row as it is sent: the envelope as JSON text, the headers without the id."""

    id: uuid.UUID
    nats_subject: str
    envelope: str
    headers: dict[str, str]


def _headers(outgoing: Outgoing) -> dict[str, str]:
    headers = dict(outgoing.headers or {})
    if outgoing.request_id is not None:
        headers[REQUEST_ID_HEADER] = outgoing.request_id
    return headers


# The session's key for the transaction whose commit will wake the relay already.
_NOTIFIED = "outbox_notified"
# The session's keys for its relay (set by ``OutboxRelay.attach``), and for the events its
# transaction wrote: (the innermost transaction that wrote them, the events).
_RELAY = "outbox_relay"
_UNSENT = "outbox_unsent"


@event.listens_for(Session, "after_commit")
def _hand_over_committed(session: Session) -> None:
    root = session.get_transaction()
    if root is not None and root.is_active:
        return  # a savepoint released: its events wait for the transaction's commit
    unsent = session.info.pop(_UNSENT, None)
    if unsent:
        session.info[_RELAY].offer([message for _, messages in unsent for message in messages])


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    unsent = session.info.get(_UNSENT)
    if unsent:
        session.info[_UNSENT] = [
            (written_in, messages)
            for written_in, messages in unsent
            if not _within(written_in, previous_transaction)
        ]


@event.listens_for(Session, "after_transaction_end")
def _forget_not_committed(session: Session, transaction: SessionTransaction) -> None:
    # A transaction closed without a commit (the session closed): nothing of it is sent.
    if transaction.parent is None:
        session.info.pop(_UNSENT, None)


def _within(transaction: SessionTransaction | None, outer: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is outer:
            return True
        transaction = transaction.parent
    return False


# Built once: composing a statement per event cost more CPU than PostgreSQL spends running it.
# One event's row as parameters: cheaper than the arrays below by about a tenth of a
# millisecond, and most publishes are of one event (a request's).
_ONE_ROW = outbox.insert().values(
    {
        "id": bindparam("id"),
        "nats_subject": bindparam("nats_subject"),
        # As the JSON text it is sent as: encoded once.
        "envelope": cast(bindparam("envelope", type_=Text), JSONB),
        "headers": bindparam("headers"),
    }
)
# Several rows as arrays: one prepared statement for any number of events, the rows taking
# their positions in the arrays' order.
_ROWS = outbox.insert().from_select(
    ["id", "nats_subject", "envelope", "headers"],
    select(
        func.unnest(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))),
        func.unnest(bindparam("subjects", type_=ARRAY(Text))),
        cast(func.unnest(bindparam("envelopes", type_=ARRAY(Text))), JSONB),
        cast(func.unnest(bindparam("headers", type_=ARRAY(Text))), JSONB),
    ),
)
_ADD_ONE = DriverStatement(_ONE_ROW)
_ADD_SEVERAL = DriverStatement(_ROWS)
_ADD_ONE_AND_NOTIFY = DriverStatement(
    select(func.pg_notify(NOTIFY_CHANNEL, "")).add_cte(_ONE_ROW.cte("added_to_outbox"))
)
_ADD_SEVERAL_AND_NOTIFY = DriverStatement(
    select(func.pg_notify(NOTIFY_CHANNEL, "")).add_cte(_ROWS.cte("added_to_outbox"))
)


class _StreamMissingError(Exception):
    pass


class OutboxRelay:
    """Sends what was committed to the outbox of ``engine``'s database to JetStream: what the
    sessions attached to it hand over as they commit, and what it sweeps.

    It keeps one connection of its own, made with asyncpg alone: it LISTENs on it and runs its
    few statements on it. Measured: a wake-up that sends one event cost 0.77 ms of CPU through a
    pooled ``AsyncSession``, 0.39 ms this way, and at a steady rate most wake-ups send one.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        js: JetStreamContext,
        *,
        poll_seconds: float = 2.0,
        batch_size: int = 100,
        publish_timeout: float = 5.0,
        max_attempts: int = 10,
        stream_replicas: int = 1,
    ) -> None:
        self._url = with_driver(engine.url, driver=PLAIN)
        self._connection: asyncpg.Connection | None = None
        self._js = js
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._publish_timeout = publish_timeout
        self._max_attempts = max_attempts
        self._stream_replicas = stream_replicas
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        # One piece of work at a time on the connection (``flush`` may be called while it runs).
        self._busy = asyncio.Lock()
        # Handed over by commits, not sent yet; and whether a sweep is wanted.
        self._handed_over: list[_Message] = []
        self._sweep_due = False  # ``run`` sweeps at once anyway, ``flush`` always
        # Ids of events handed over and acked, to mark sent by (the event loop's time) _mark_at.
        self._acked: list[uuid.UUID] = []
        self._mark_at = 0.0
        self._next_prune = 0.0
        # Flushes that failed in a row (NATS or the database unreachable); 0 when healthy.
        self.consecutive_failures = 0
        # Events sent, by how they came: handed over by a commit, or swept.
        self.sent_at_commit = 0
        self.sent_by_sweep = 0
        # Built once: it runs on every wake-up. The rows chosen once (MATERIALIZED), so that no
        # plan can run the locking, limited choice twice and claim more than a batch.
        claimed = (
            select(outbox.c.id)
            .where(outbox.c.published_at.is_(None), outbox.c.failed_at.is_(None))
            .order_by(outbox.c.position)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
            .cte("claimed")
            .prefix_with("MATERIALIZED")
        )
        self._claim = DriverStatement(
            update(outbox)
            .where(outbox.c.id == claimed.c.id)
            .values(published_at=func.now())
            .returning(
                outbox.c.id,
                outbox.c.position,
                outbox.c.nats_subject,
                # As text: sent as it is, not decoded and encoded again.
                outbox.c.envelope.cast(Text).label("envelope"),
                outbox.c.headers.cast(Text).label("headers"),
            )
        )

    def attach(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Have the sessions of ``sessionmaker`` hand the events they write to this relay as
        their transactions commit, to be sent at once (no ``NOTIFY``, no claim)."""
        info = dict(sessionmaker.kw.get("info") or {})
        info[_RELAY] = self
        sessionmaker.configure(info=info)

    def offer(self, messages: list[_Message]) -> None:
        """Events just committed, to send now. Not kept while sending fails, nor beyond a bound:
        they are in the outbox, and the sweep sends them."""
        if self.consecutive_failures or len(self._handed_over) >= MAX_HANDED_OVER:
            self._sweep_due = True
            return
        self._handed_over.extend(messages)
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    async def run(self) -> None:
        """Publish until stopped; a final flush sends what was committed before the stop."""
        loop = asyncio.get_running_loop()
        backoff = 0.0
        next_sweep = loop.time()  # rows committed while no relay was running go out at once
        try:
            while not self._stopped.is_set():
                if backoff:
                    # NATS (or the database) is failing: commits must not shorten the backoff.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopped.wait(), backoff)
                else:
                    # A sweep every poll, whatever else wakes it.
                    due = min(next_sweep, self._mark_at) if self._acked else next_sweep
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(0.0, due - loop.time()))
                self._wake.clear()
                if self._stopped.is_set():
                    break
                if loop.time() >= next_sweep:
                    self._sweep_due = True
                try:
                    async with self._busy:
                        await self._send_handed_over()
                        if self._acked and (self._sweep_due or loop.time() >= self._mark_at):
                            await self._mark_sent()
                        if self._sweep_due:
                            await self._sweep()
                            next_sweep = loop.time() + self._poll_seconds
                    backoff = 0.0
                    self.consecutive_failures = 0
                except Exception as exc:
                    self._handed_over.clear()  # in the outbox: swept once sending works again
                    self._sweep_due = True
                    self.consecutive_failures += 1
                    backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF_SECONDS)
                    log.warning("outbox relay failed, retrying in %.1fs: %r", backoff, exc)
                    continue
                await self._prune()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), self._publish_timeout)
            await self.close()

    async def close(self) -> None:
        """Close the relay's connection (``run`` does, once stopped; a caller of ``flush``
        alone does it itself)."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    async def _connected(self) -> asyncpg.Connection:
        """The relay's connection, LISTENing for commits that wrote to the outbox; made again
        when it was lost (the flush that calls this then finds what was committed meanwhile)."""
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        connection = await asyncpg.connect(
            self._url, timeout=CONNECT_TIMEOUT_SECONDS, server_settings=_RELAY_SETTINGS
        )
        try:
            await connection.add_listener(NOTIFY_CHANNEL, self._wake_up)
            # Lost (PostgreSQL restarted, the backend terminated): made again at once, not at
            # the next poll.
            connection.add_termination_listener(self._wake_up)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        return connection

    def _wake_up(self, *_: Any) -> None:
        self._sweep_due = True
        self._wake.set()

    async def flush(self) -> int:
        """Publish what was handed over and every committed, unpublished row; return how many
        were published."""
        async with self._busy:
            sent = await self._send_handed_over()
            await self._mark_sent()
            return sent + await self._sweep()

    async def _send_handed_over(self) -> int:
        """Send the events handed over by commits, a batch at a time. Those acked are marked
        sent a moment later, together (``_mark_sent``); one not acked is left to the sweep,
        which retries it (and counts a refusal)."""
        sent = 0
        while self._handed_over:
            batch = self._handed_over[: self._batch_size]
            del self._handed_over[: self._batch_size]
            results = await self._send(batch)
            acked = [message.id for message, error in zip(batch, results, strict=True) if not error]
            if acked and not self._acked:
                self._mark_at = asyncio.get_running_loop().time() + MARK_SENT_AFTER_SECONDS
            self._acked.extend(acked)
            sent += len(acked)
            self.sent_at_commit += len(acked)
            if len(acked) < len(batch):
                # NATS failing, or a row refused: the rest too go to the sweep, which backs off
                # (rather than each batch waiting out its own publish timeout).
                self._handed_over.clear()
                self._sweep_due = True
        return sent

    async def _mark_sent(self) -> None:
        """Mark the events acked since the last time as sent, in one statement. Until then a
        sweep would send them again (this relay's marks them first): JetStream's duplicate
        window drops the second."""
        if self._acked:
            await _MARK_SENT.all_on(await self._connected(), {"ids": self._acked})
            self._acked = []

    async def _send(self, messages: Sequence[_Message]) -> list[BaseException | None]:
        """Publish back to back, in order (each task sends before its first pause), and await
        the acks together; the error of each message not acked."""
        results = await asyncio.gather(
            *(
                self._js.publish(
                    message.nats_subject,
                    message.envelope.encode(),
                    timeout=self._publish_timeout,
                    headers={**message.headers, "Nats-Msg-Id": str(message.id)},
                )
                for message in messages
            ),
            return_exceptions=True,
        )
        return [result if isinstance(result, BaseException) else None for result in results]

    async def _sweep(self) -> int:
        """Claim and publish every committed, unpublished row."""
        self._sweep_due = False  # a wake-up while sweeping asks for another sweep
        total = 0
        while True:
            try:
                published, more = await self._publish_batch()
            except _StreamMissingError:
                # The stream was deleted or the NATS store lost: make it again, then retry.
                log.warning("stream missing: creating it again")
                await ensure_stream(self._js, self._stream_replicas)
                continue
            total += published
            self.sent_by_sweep += published
            if not more:
                return total

    async def _publish_batch(self) -> tuple[int, bool]:
        connection = await self._connected()
        async with connection.transaction():
            # Claimed and marked sent in one statement; a row not acked is unmarked before the
            # commit, and a crash in between rolls the marks back.
            claimed = await self._claim.all_on(connection)
            rows = sorted(claimed, key=lambda row: row.position)
            if self._handed_over:  # committed just now: sent here, not again as handed over
                ids = {row.id for row in rows}
                self._handed_over = [m for m in self._handed_over if m.id not in ids]
            results = await self._send(
                [
                    _Message(row.id, row.nats_subject, row.envelope, json.loads(row.headers))
                    for row in rows
                ]
            )
            unsent = []
            refused: list[tuple[Any, APIError]] = []
            failure: BaseException | None = None  # the first, raised once the rest is settled
            for row, result in zip(rows, results, strict=True):
                if result is None:
                    continue
                unsent.append(row.id)
                if isinstance(result, NoStreamResponseError | NoRespondersError):
                    failure = failure or _StreamMissingError()
                elif isinstance(result, APIError) and not isinstance(
                    result, ServiceUnavailableError
                ):
                    refused.append((row.id, result))
                else:  # NATS unreachable or slow: retried later
                    failure = failure or result
            if unsent:
                await _UNMARK.all_on(connection, {"ids": unsent})
            for row_id, exc in refused:
                await self._refused(connection, row_id, exc)
        if failure is not None:
            raise failure
        return len(rows) - len(unsent), len(rows) == self._batch_size

    async def _refused(self, connection: asyncpg.Connection, row_id: Any, exc: APIError) -> None:
        """JetStream refused the row itself: count it, and give up on it after max_attempts."""
        error = f"{type(exc).__name__} {exc.err_code}: {exc.description}"
        (row,) = await _COUNT_REFUSAL.all_on(
            connection,
            {"id": row_id, "error": error[:2000], "max_attempts": self._max_attempts},
        )
        if row.failed_at is not None:
            log.error(
                "outbox row %s refused %d times, marked failed: %s",
                row_id,
                self._max_attempts,
                error,
            )

    async def _prune(self) -> None:
        loop_time = asyncio.get_running_loop().time()
        if loop_time < self._next_prune:
            return
        self._next_prune = loop_time + PRUNE_EVERY_SECONDS
        try:
            connection = await self._connected()
            async with connection.transaction():
                await _PRUNE_OUTBOX.all_on(connection)
                await _PRUNE_INBOX.all_on(connection)
        except Exception as exc:
            log.warning("pruning old outbox and inbox rows failed: %r", exc)


# The relay's own statements, on its own connection.
_IDS = bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))
# Not if a sweep marked it first (a row it claimed while the row was being handed over).
_MARK_SENT = DriverStatement(
    update(outbox)
    .where(outbox.c.id == func.any(_IDS), outbox.c.published_at.is_(None))
    .values(published_at=func.now())
)
_UNMARK = DriverStatement(
    update(outbox).where(outbox.c.id == func.any(_IDS)).values(published_at=None)
)
_ATTEMPTS = outbox.c.attempts + 1
_COUNT_REFUSAL = DriverStatement(
    update(outbox)
    .where(outbox.c.id == bindparam("id"))
    .values(
        attempts=_ATTEMPTS,
        last_error=bindparam("error"),
        failed_at=case((bindparam("max_attempts") <= _ATTEMPTS, func.now())),
    )
    .returning(outbox.c.failed_at)
)
_PRUNE_OUTBOX = DriverStatement(delete(outbox).where(outbox.c.published_at < PUBLISHED_CUTOFF))
_PRUNE_INBOX = DriverStatement(delete(inbox).where(inbox.c.handled_at < INBOX_CUTOFF))
