"""What a running platform holds: every database's rows the invariants need, and the stream.

Read through the platform's own credentials: PostgreSQL's local ``postgres`` user (local mode
trusts local connections) and the bus's read-only ``monitor`` user.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ticketing_chaos.platform import Endpoints, databases
from ticketing_common.events.models import EventEnvelope, Subject
from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_local.datafolder import NatsCredentials

Row = dict[str, Any]


@dataclass
class Snapshot:
    # Per service database.
    inbox: dict[str, set[uuid.UUID]] = field(default_factory=dict)
    parked: dict[str, list[Row]] = field(default_factory=dict)
    unsent: dict[str, list[Row]] = field(default_factory=dict)  # outbox rows not published
    # Per subject, the events in the stream, once each (a duplicate id is counted apart).
    events: dict[Subject, dict[uuid.UUID, EventEnvelope]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    duplicate_events: list[uuid.UUID] = field(default_factory=list)
    tickets: list[Row] = field(default_factory=list)  # tickets' own tickets
    ticket_replicas: dict[uuid.UUID, Row] = field(default_factory=dict)  # orders' copy
    orders: list[Row] = field(default_factory=list)  # orders' own orders
    order_replicas: dict[uuid.UUID, Row] = field(default_factory=dict)  # payments' copy
    payments: list[Row] = field(default_factory=list)


async def take_snapshot(where: Endpoints, monitor: NatsCredentials) -> Snapshot:
    snapshot = Snapshot()
    for database in databases():
        await _read_database(snapshot, where.database_dsn(database), database)
    await _read_stream(snapshot, where.nats_url, monitor)
    return snapshot


async def _read_database(snapshot: Snapshot, dsn: str, database: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:

        async def rows(query: str) -> list[Row]:
            return [dict(r) for r in await conn.fetch(query)]

        snapshot.inbox[database] = {r["event_id"] for r in await rows("SELECT event_id FROM inbox")}
        snapshot.parked[database] = await rows(
            "SELECT event_id, subject, deliveries, error FROM parked_events ORDER BY parked_at"
        )
        snapshot.unsent[database] = await rows(
            "SELECT id, nats_subject, attempts, last_error, failed_at FROM outbox"
            " WHERE published_at IS NULL ORDER BY position"
        )
        if database == "tickets":
            snapshot.tickets = await rows("SELECT id, order_id, version FROM tickets")
        elif database == "orders":
            snapshot.orders = await rows(
                "SELECT id, ticket_id, ticket_price, status, version FROM orders"
            )
            snapshot.ticket_replicas = {
                r["id"]: r for r in await rows("SELECT id, version FROM tickets")
            }
        elif database == "payments":
            snapshot.payments = await rows("SELECT id, order_id, status FROM payments")
            snapshot.order_replicas = {
                r["id"]: r for r in await rows("SELECT id, status, version FROM orders")
            }
    finally:
        await conn.close()


async def _read_stream(snapshot: Snapshot, url: str, monitor: NatsCredentials) -> None:
    """Every event of every subject, through ephemeral consumers of the monitor's own."""
    nc = await nats.connect(
        url, user=monitor.user, password=monitor.password, allow_reconnect=False
    )
    try:
        js = nc.jetstream()
        for subject in Subject:
            sub = await js.pull_subscribe(
                subject.value,
                stream=STREAM_NAME,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=30,
                ),
            )
            try:
                remaining = (await sub.consumer_info()).num_pending or 0
                while remaining > 0:
                    batch = await sub.fetch(min(remaining, 500), timeout=10)
                    remaining -= len(batch)
                    for msg in batch:
                        envelope = EventEnvelope.model_validate_json(msg.data)
                        if envelope.id in snapshot.events[subject]:
                            snapshot.duplicate_events.append(envelope.id)
                        snapshot.events[subject][envelope.id] = envelope
            finally:
                await sub.unsubscribe()
    finally:
        await nc.close()
