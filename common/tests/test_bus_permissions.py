"""The bus admits only its users, and each may do only what its service does.

Every test runs against a real NATS server configured by ``render_authorization`` (the
``secured_nats`` fixture), attacking it as a stolen or misused connection would: no
credentials, a wrong password, one service publishing another's events or taking another's
consumer, expiration publishing an event the scheduler should fire (or scheduling one it must
not: the consumer drops it), the read-only monitor writing. What each service really does on
the bus is shown by the integration test that runs every service on a secured server
(``tests/integration/test_secured_bus.py``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ticketing_common.clock import utcnow
from ticketing_common.events import Event, EventEnvelope, ExpirationComplete, PaymentCreated
from ticketing_common.messaging import Consumer, ConsumerRunner, ensure_stream
from ticketing_common.messaging.connection import BusCredentialsRefusedError, connect_nats
from ticketing_common.messaging.permissions import SERVICE_USERS, render_authorization
from ticketing_common.messaging.streams import DUPLICATE_WINDOW_SECONDS, STREAM_NAME, stream_config
from ticketing_common.settings import ServiceSettings
from ticketing_common.testing import EventProbe, send_event, test_settings
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.plugin import SecuredNats

pytestmark = pytest.mark.timeout(60)


class Connections:
    """Connections to the secured server as bus users, each recording what the server refused."""

    def __init__(self, server: SecuredNats) -> None:
        self.server = server
        self.refusals: dict[str, list[str]] = {}
        self._open: list[NatsClient] = []

    async def connect(self, user: str) -> NatsClient:
        refusals = self.refusals.setdefault(user, [])

        async def on_error(exc: Exception) -> None:
            refusals.append(str(exc))

        nc = await self.server.connect(user, error_cb=on_error)
        self._open.append(nc)
        return nc

    async def jetstream(self, user: str) -> JetStreamContext:
        # A refused request gets no answer: wait for it briefly.
        return (await self.connect(user)).jetstream(timeout=1)

    async def refused(self, user: str, what: str) -> None:
        """Wait until the server has told ``user`` it refused ``what``."""

        async def told() -> bool:
            # The client lower-cases the server's message.
            return any(what.lower() in refusal for refusal in self.refusals[user])

        await eventually(told, timeout=5)

    async def close(self) -> None:
        for nc in self._open:
            await nc.close()


@pytest.fixture
async def bus(secured_nats: SecuredNats) -> AsyncIterator[Connections]:
    connections = Connections(secured_nats)
    # The stream exists, made by a service as at start-up.
    await ensure_stream(await connections.jetstream("orders"))
    yield connections
    await connections.close()


def settings(server: SecuredNats, **overrides: Any) -> ServiceSettings:
    return test_settings(
        ServiceSettings, "postgresql+asyncpg://unused/unused", server.url, **overrides
    )


def payment() -> PaymentCreated:
    return PaymentCreated(id=uuid.uuid4(), order_id=uuid.uuid4(), provider_ref="ch_forged")


async def test_a_connection_without_credentials_is_refused(secured_nats: SecuredNats) -> None:
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(secured_nats.url, allow_reconnect=False)
    # A service started without NATS_USER fails at once, saying why (no endless retry).
    with pytest.raises(BusCredentialsRefusedError, match="NATS_USER"):
        await connect_nats(settings(secured_nats))


async def test_a_wrong_password_is_refused(secured_nats: SecuredNats) -> None:
    # Another user's (valid) password does not open this user's account.
    wrong = settings(
        secured_nats, nats_user="orders", nats_password=secured_nats.passwords["payments"]
    )
    with pytest.raises(BusCredentialsRefusedError, match="'orders'") as refused:
        await connect_nats(wrong)
    assert secured_nats.passwords["payments"] not in str(refused.value)
    right = settings(secured_nats, **secured_nats.credentials("orders"))
    nc = await connect_nats(right)
    assert nc.is_connected
    await nc.close()


@pytest.mark.parametrize("service", SERVICE_USERS)
async def test_every_service_ensures_the_stream(bus: Connections, service: str) -> None:
    js = await bus.jetstream(service)
    await ensure_stream(js)  # a second replica starting
    # A stream left with an older configuration is brought up to date.
    await js.update_stream(stream_config().evolve(duplicate_window=60.0))
    await ensure_stream(js)
    info = await (await bus.jetstream("monitor")).stream_info(STREAM_NAME)
    assert info.config.duplicate_window == DUPLICATE_WINDOW_SECONDS


async def test_orders_cannot_publish_a_payment(bus: Connections) -> None:
    orders = await bus.connect("orders")
    with pytest.raises(NatsTimeoutError):  # no ack: the server dropped it
        await send_event(orders.jetstream(timeout=1), payment())
    await bus.refused("orders", 'permissions violation for publish to "payment.created"')
    # Nor as a plain publish, which asks for no ack.
    forged = EventEnvelope.wrap(payment())
    await orders.publish("payment.created", forged.model_dump_json(by_alias=True).encode())
    await orders.flush()

    # The payments user may; the stream holds its payment and nothing forged.
    real = await send_event(await bus.jetstream("payments"), payment())
    probe = EventProbe(await bus.jetstream("monitor"))
    assert [envelope.id for envelope in await probe.all("payment.created")] == [real.id]


async def test_expiration_publishes_only_its_schedules(bus: Connections) -> None:
    expiration = await bus.jetstream("expiration")
    with pytest.raises(NatsTimeoutError):
        await send_event(expiration, ExpirationComplete(order_id=uuid.uuid4()))
    await bus.refused("expiration", 'permissions violation for publish to "expiration.complete"')
    # Not another service's schedules either.
    with pytest.raises(NatsTimeoutError):
        await expiration.publish("schedule.payments.x", b"{}", timeout=1)
    await bus.refused("expiration", 'permissions violation for publish to "schedule.payments.x"')


def _durable_config(name: str) -> ConsumerConfig:
    return ConsumerConfig(durable_name=name, filter_subjects=[">"], ack_policy=AckPolicy.EXPLICIT)


async def test_a_service_cannot_take_another_services_consumer(bus: Connections) -> None:
    payments = await bus.jetstream("payments")
    await payments.add_consumer(STREAM_NAME, _durable_config("payments"))
    await send_event(await bus.jetstream("payments"), payment())
    orders = await bus.jetstream("orders")

    attempts: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (
            "$JS.API.CONSUMER.DURABLE.CREATE.EVENTS.payments",
            lambda: orders.add_consumer(STREAM_NAME, _durable_config("payments"), timeout=1),
        ),
        (
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.payments",
            lambda: _fetch(orders, "payments"),
        ),
        (
            "$JS.API.CONSUMER.DELETE.EVENTS.payments",
            lambda: orders.delete_consumer(STREAM_NAME, "payments"),
        ),
    ]
    for subject, attempt in attempts:
        with pytest.raises(NatsTimeoutError):
            await attempt()
        await bus.refused("orders", f'permissions violation for publish to "{subject}"')
    # Still there, untouched: its owner gets the event.
    messages = await _fetch(payments, "payments")
    assert [m.subject for m in messages] == ["payment.created"]


async def _fetch(js: JetStreamContext, durable: str) -> list[Any]:
    sub = await js.pull_subscribe_bind(durable=durable, stream=STREAM_NAME)
    try:
        return list(await sub.fetch(1, timeout=1))
    finally:
        await sub.unsubscribe()


async def test_no_core_subscription_to_events(bus: Connections) -> None:
    # Events reach a service only through its own durable, never by listening on a subject,
    # nor by listening on another user's replies (where its pulled messages arrive).
    orders = await bus.connect("orders")
    for subject in ("payment.created", "_INBOX_payments.>", "_INBOX.>"):
        await orders.subscribe(subject)
        await bus.refused("orders", f'permissions violation for subscription to "{subject}"')


async def test_monitor_reads_the_stream_and_writes_nothing(bus: Connections) -> None:
    real = await send_event(await bus.jetstream("payments"), payment())
    monitor = await bus.jetstream("monitor")
    assert (await monitor.stream_info(STREAM_NAME)).state.messages == 1
    assert [e.id for e in await EventProbe(monitor).all("payment.created")] == [real.id]

    with pytest.raises(NatsTimeoutError):
        await send_event(monitor, payment())
    await bus.refused("monitor", 'permissions violation for publish to "payment.created"')
    with pytest.raises(NatsTimeoutError):
        await monitor.add_consumer(STREAM_NAME, _durable_config("orders"), timeout=1)
    await bus.refused("monitor", "CONSUMER.DURABLE.CREATE.EVENTS.orders")
    with pytest.raises(NatsTimeoutError):
        await monitor.delete_stream(STREAM_NAME)
    await bus.refused("monitor", "STREAM.DELETE.EVENTS")


def test_a_password_cannot_inject_configuration() -> None:
    with pytest.raises(ValueError, match="password"):
        render_authorization({"orders": 'x" }, {user: "root"'})
    with pytest.raises(ValueError, match="no such NATS user"):
        render_authorization({"root": "0123456789abcdef0123"})


async def test_a_fired_message_on_a_subject_never_scheduled_is_dropped(
    bus: Connections,
    sessionmaker: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server does not check a schedule's target against the publisher's rights: expiration
    may schedule a payment.created. The consumer refuses it; a real timer still fires."""
    caplog.set_level(logging.WARNING, logger="ticketing_common.messaging.consumer")
    expiration = await bus.jetstream("expiration")
    forged, timer = payment(), ExpirationComplete(order_id=uuid.uuid4())
    for event in (forged, timer):
        await expiration.publish(
            f"schedule.expiration.{uuid.uuid4()}",
            EventEnvelope.wrap(event).model_dump_json(by_alias=True).encode(),
            headers={
                "Nats-Schedule": utcnow().strftime("@at %Y-%m-%dT%H:%M:%S.%fZ"),  # due now
                "Nats-Schedule-Target": event.subject.value,
            },
        )

    handled: list[Event] = []
    consumer = Consumer("orders")  # orders consumes both subjects, with its own rights

    @consumer.on(PaymentCreated)
    async def paid(session: AsyncSession, event: PaymentCreated) -> None:
        handled.append(event)

    @consumer.on(ExpirationComplete)
    async def expired(session: AsyncSession, event: ExpirationComplete) -> None:
        handled.append(event)

    runner = ConsumerRunner(consumer, await bus.jetstream("orders"), sessionmaker)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _contains(handled, timer))

        async def dropped() -> bool:
            return any("dropped payment.created" in r.getMessage() for r in caplog.records)

        await eventually(dropped)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)
    assert handled == [timer]
    info = await (await bus.jetstream("monitor")).consumer_info(STREAM_NAME, "orders")
    assert info.num_ack_pending == 0  # acknowledged: it never comes back


async def _contains(items: list[Event], item: Event) -> bool:
    return item in items
