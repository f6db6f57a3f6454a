"""The transactional outbox.

``publish(session, event)`` (``publish_all`` for several at once) adds the event to the
``outbox`` table in the caller's transaction, so the state change and its events commit (or roll
back) together. The transaction's first ``publish`` also sends a ``NOTIFY`` (in the same
statement as its insert), which PostgreSQL delivers only on commit: the relay wakes once per
transaction, at once, and a slow poll is the safety net. The relay, on a PostgreSQL
connection of its own (the one that LISTENs: no pool, no session), claims a batch of
unpublished rows and marks them published in one statement, in a transaction (``FOR UPDATE SKIP
LOCKED``: replicas share the work without taking the same row), publishes them back to back,
each with ``Nats-Msg-Id`` = event id (a row republished after a crash is dropped by JetStream's
duplicate window, and by every inbox), awaits their acks together, unmarks those not acked and
commits; it retries them with backoff while NATS is down.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError
from sqlalchemy import Text, bindparam, case, cast, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

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
    subjects = [
        outgoing.nats_subject or envelope.subject.value
        for outgoing, envelope in zip(events, envelopes, strict=True)
    ]
    headers = [_headers(outgoing) for outgoing in events]
    # The (sub)transaction's first statement here also wakes the relay, in the same statement:
    # delivered at commit, and only then. (A savepoint counts apart: rolled back, its NOTIFY is
    # gone.) Begun first: a session whose first statement this is has no transaction yet.
    connection = await driver_connection(session)
    transaction = innermost_transaction(session)
    notify = session.info.get(_NOTIFIED) is not transaction
    if len(envelopes) == 1:
        row = {
            "id": envelopes[0].id,
            "nats_subject": subjects[0],
            "envelope": envelopes[0].model_dump(mode="json", by_alias=True),
            "headers": headers[0],
        }
        await (_ADD_ONE_AND_NOTIFY if notify else _ADD_ONE).all_on(connection, row)
    else:
        columns = {
            "ids": [envelope.id for envelope in envelopes],
            "subjects": subjects,
            "envelopes": [envelope.model_dump_json(by_alias=True) for envelope in envelopes],
            "headers": [json.dumps(one) for one in headers],
        }
        await (_ADD_SEVERAL_AND_NOTIFY if notify else _ADD_SEVERAL).all_on(connection, columns)
    session.info[_NOTIFIED] = transaction
    return envelopes


def _headers(outgoing: Outgoing) -> dict[str, str]:
    headers = dict(outgoing.headers or {})
    if outgoing.request_id is not None:
        headers[REQUEST_ID_HEADER] = outgoing.request_id
    return headers


# The session's key for the transaction whose commit will wake the relay already.
_NOTIFIED = "outbox_notified"
# Built once: composing a statement per event cost more CPU than PostgreSQL spends running it.
# One event's row as parameters: cheaper than the arrays below by about a tenth of a
# millisecond, and most publishes are of one event (a request's).
_ONE_ROW = outbox.insert().values(
    {name: bindparam(name) for name in ("id", "nats_subject", "envelope", "headers")}
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
    """Sends what was committed to the outbox of ``engine``'s database to JetStream.

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
        self._next_prune = 0.0
        # Flushes that failed in a row (NATS or the database unreachable); 0 when healthy.
        self.consecutive_failures = 0
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

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    async def run(self) -> None:
        """Publish until stopped; a final flush sends what was committed before the stop."""
        backoff = 0.0
        self._wake.set()  # rows committed while no relay was running go out at once
        try:
            while not self._stopped.is_set():
                if backoff:
                    # NATS (or the database) is failing: commits must not shorten the backoff.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopped.wait(), backoff)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
                self._wake.clear()
                if self._stopped.is_set():
                    break
                try:
                    await self.flush()
                    backoff = 0.0
                    self.consecutive_failures = 0
                except Exception as exc:
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
        self._wake.set()

    async def flush(self) -> int:
        """Publish every committed, unpublished row; return how many were published."""
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
            if not more:
                return total

    async def _publish_batch(self) -> tuple[int, bool]:
        connection = await self._connected()
        async with connection.transaction():
            # Claimed and marked sent in one statement; a row not acked is unmarked before the
            # commit, and a crash in between rolls the marks back.
            claimed = await self._claim.all_on(connection)
            rows = sorted(claimed, key=lambda row: row.position)
            # Sent back to back, in order (each task sends before its first pause), and their
            # acks awaited together.
            results = await asyncio.gather(
                *(
                    self._js.publish(
                        row.nats_subject,
                        row.envelope.encode(),
                        timeout=self._publish_timeout,
                        headers={**json.loads(row.headers), "Nats-Msg-Id": str(row.id)},
                    )
                    for row in rows
                ),
                return_exceptions=True,
            )
            unsent = []
            refused: list[tuple[Any, APIError]] = []
            failure: BaseException | None = None  # the first, raised once the rest is settled
            for row, result in zip(rows, results, strict=True):
                if not isinstance(result, BaseException):
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
_UNMARK = DriverStatement(
    update(outbox)
    .where(outbox.c.id == func.any(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))))
    .values(published_at=None)
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
