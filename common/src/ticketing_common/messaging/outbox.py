"""The transactional outbox.

``publish(session, event)`` adds the event to the ``outbox`` table in the caller's transaction,
so the state change and its events commit (or roll back) together. The same transaction sends a
``NOTIFY``, which PostgreSQL delivers only on commit: the relay wakes at once, and a slow poll is
the safety net. The relay takes unpublished rows with ``FOR UPDATE SKIP LOCKED`` (replicas share
the work without taking the same row), publishes each with ``Nats-Msg-Id`` = event id (a row
republished after a crash is dropped by JetStream's duplicate window, and by every inbox), marks
it published and retries with backoff while NATS is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import timedelta
from typing import Any

import asyncpg
from nats.js import JetStreamContext
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ticketing_common.db import utcnow
from ticketing_common.events import Event, EventEnvelope
from ticketing_common.messaging.tables import outbox
from ticketing_common.observability import REQUEST_ID_HEADER, request_id_var

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "outbox"
PUBLISHED_RETENTION = timedelta(days=3)


async def publish(
    session: AsyncSession,
    event: Event,
    *,
    nats_subject: str | None = None,
    headers: dict[str, str] | None = None,
) -> EventEnvelope:
    """Add ``event`` to the outbox in ``session``'s transaction; it is sent after commit.

    ``nats_subject`` and ``headers`` let a service send the envelope somewhere other than its
    own subject (a JetStream message schedule, for instance).
    """
    envelope = EventEnvelope.wrap(event)
    all_headers = dict(headers or {})
    if (request_id := request_id_var.get()) is not None:
        all_headers[REQUEST_ID_HEADER] = request_id
    await session.execute(
        outbox.insert().values(
            id=envelope.id,
            nats_subject=nats_subject or envelope.subject.value,
            envelope=envelope.model_dump(mode="json", by_alias=True),
            headers=all_headers,
        )
    )
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    return envelope


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        js: JetStreamContext,
        *,
        poll_seconds: float = 2.0,
        batch_size: int = 100,
        publish_timeout: float = 5.0,
    ) -> None:
        self._engine = engine
        self._sessionmaker = sessionmaker
        self._js = js
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._publish_timeout = publish_timeout
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_prune = 0.0

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Publish until stopped; a final flush sends what was committed before the stop."""
        listener: asyncpg.Connection | None = None
        backoff = 0.0
        self._wake.set()  # rows committed while no relay was running go out at once
        try:
            while not self._stopping:
                listener = await self._listening(listener)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff or self._poll_seconds)
                self._wake.clear()
                if self._stopping:
                    break
                try:
                    await self.flush()
                    backoff = 0.0
                    await self._prune()
                except Exception as exc:
                    backoff = min(max(backoff * 2, 0.1), 5.0)
                    log.warning("outbox relay failed, retrying in %.1fs: %r", backoff, exc)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), self._publish_timeout)

    async def _listening(self, listener: asyncpg.Connection | None) -> asyncpg.Connection | None:
        """A connection LISTENing for commits that wrote to the outbox, (re)opened as needed.

        Without one the relay still works, on the poll alone.
        """
        if listener is not None and not listener.is_closed():
            return listener
        try:
            dsn = self._engine.url.set(drivername="postgresql").render_as_string(
                hide_password=False
            )
            listener = await asyncpg.connect(dsn)
            await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self._wake.set()  # a commit may have been missed while not listening
            return listener
        except Exception as exc:
            log.warning("outbox relay cannot LISTEN, polling only: %r", exc)
            return None

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def flush(self) -> int:
        """Publish every committed, unpublished row; return how many were published."""
        total = 0
        while True:
            published, more = await self._publish_batch()
            total += published
            if not more:
                return total

    async def _publish_batch(self) -> tuple[int, bool]:
        async with self._sessionmaker() as session, session.begin():
            rows = (
                await session.execute(
                    select(outbox.c.id, outbox.c.nats_subject, outbox.c.envelope, outbox.c.headers)
                    .where(outbox.c.published_at.is_(None))
                    .order_by(outbox.c.position)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            published = []
            error: Exception | None = None
            for row in rows:
                try:
                    await self._js.publish(
                        row.nats_subject,
                        json.dumps(row.envelope).encode(),
                        timeout=self._publish_timeout,
                        headers={**row.headers, "Nats-Msg-Id": str(row.id)},
                    )
                except Exception as exc:
                    error = exc
                    await session.execute(
                        update(outbox)
                        .where(outbox.c.id == row.id)
                        .values(attempts=outbox.c.attempts + 1, last_error=repr(exc)[:2000])
                    )
                    break
                published.append(row.id)
            if published:
                await session.execute(
                    update(outbox).where(outbox.c.id.in_(published)).values(published_at=func.now())
                )
        if error is not None:
            raise error
        return len(published), len(rows) == self._batch_size

    async def _prune(self) -> None:
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._last_prune < 600:
            return
        self._last_prune = loop_time
        async with self._sessionmaker() as session, session.begin():
            await session.execute(
                delete(outbox).where(outbox.c.published_at < utcnow() - PUBLISHED_RETENTION)
            )
