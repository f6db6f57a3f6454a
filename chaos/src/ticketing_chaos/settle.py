"""Waiting for the platform to settle after the chaos: every process back, every outbox
drained, every consumer caught up, every order either complete or cancelled (unpaid ones
expire), and no order's timer about to fire. Polled with a timeout; what was still pending is
returned when it runs out.

The timers matter even for orders already paid or cancelled: each still fires at its
``expiresAt`` (orders then records it and does nothing). One firing while the check reads the
databases, then the stream, would be in the stream and not yet in orders' inbox. So settling
waits for those due within the next half minute (far longer than the check takes); one due
later fires after the check.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import asyncpg
import nats
from nats.errors import Error as NatsError

from ticketing_chaos.faults import TARGETS
from ticketing_chaos.platform import PlatformError, databases, endpoints, live_pid
from ticketing_common.events.catalog import CATALOG
from ticketing_common.messaging.permissions import durable_name
from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_local.datafolder import DataFolder

# JetStream fires a message schedule within its scheduler's tick (under a second) of its time;
# once that long has passed, the consumer's backlog counts the fired event.
TIMER_FIRED_WITHIN = timedelta(seconds=2)
# A timer due later than this fires after the check has read everything.
TIMER_DUE_WITHIN = timedelta(seconds=30)


async def settle(data: DataFolder, timeout: float) -> list[str]:
    """Poll until nothing is pending; what still was if ``timeout`` ran out first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pending = await _pending(data)
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            NatsError,
            PlatformError,
        ) as exc:  # a server still coming back
            pending = [f"cannot read the platform yet: {exc!r}"]
        if not pending or time.monotonic() > deadline:
            return pending
        await asyncio.sleep(0.5)


async def _pending(data: DataFolder) -> list[str]:
    pending = [f"{name} is not running" for name in TARGETS if live_pid(data, name) is None]
    if pending:
        return pending
    where = endpoints(data)
    for database in databases():
        conn = await asyncpg.connect(where.database_dsn(database), timeout=5)
        try:
            unsent = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND failed_at IS NULL"
            )
            if unsent:
                pending.append(f"{database}: {unsent} outbox rows to publish")
            if database == "orders":
                live = await conn.fetchval(
                    "SELECT count(*) FROM orders WHERE status NOT IN ('complete', 'cancelled')"
                )
                if live:
                    pending.append(f"orders: {live} orders neither complete nor cancelled")
                due = await conn.fetchval(
                    "SELECT count(*) FROM orders"
                    " WHERE expires_at BETWEEN now() - $1::interval AND now() + $2::interval",
                    TIMER_FIRED_WITHIN,
                    TIMER_DUE_WITHIN,
                )
                if due:
                    pending.append(f"orders: {due} expiry timers about to fire")
        finally:
            await conn.close()
    monitor = data.monitor_credentials()
    nc = await nats.connect(
        where.nats_url, user=monitor.user, password=monitor.password, allow_reconnect=False
    )
    try:
        js = nc.jetstream()
        for service, events in CATALOG.items():
            if events.consumes:
                info = await js.consumer_info(STREAM_NAME, durable_name(service), timeout=5)
                if info.num_pending or info.num_ack_pending:
                    pending.append(
                        f"{service}: {info.num_pending} events to deliver, "
                        f"{info.num_ack_pending} unacknowledged"
                    )
    finally:
        await nc.close()
    return pending
