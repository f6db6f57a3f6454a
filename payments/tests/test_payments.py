"""POST /api/payments against real PostgreSQL and NATS, with the sandbox provider."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from nats.js import JetStreamContext

from payments import service
from payments.app import create_app
from payments.providers import IntentClosedError, ProviderUnavailableError, SandboxProvider
from payments.settings import PaymentsSettings
from ticketing_common.db import transaction
from ticketing_common.events import (
    OrderCancelled,
    OrderCancelledTicket,
)
from ticketing_common.messaging import Received
from ticketing_common.testing import EventProbe, ServiceHarness, TestDatabase, session_cookie
from ticketing_common.testing.helpers import eventually
from ticketing_common.testing.stand_ins import OrdersStandIn

from .helpers import PAY, cookie_header, declined_then_paid, message, paid, pay, refused


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_pays_an_order(
    client: httpx.AsyncClient,
    orders: OrdersStandIn,
    provider: SandboxProvider,
    event_probe: EventProbe,
) -> None:
    r, order_id, _ = await paid(client, orders, price="12.50")

    body = r.json()
    assert body["orderId"] == str(order_id) and body["status"] == "succeeded"
    [payment] = await orders.payments(order_id)
    assert str(payment["id"]) == body["id"]
    assert payment["status"] == "succeeded" and payment["amount"] == Decimal("12.50")
    assert payment["currency"] == "usd" and payment["provider"] == "sandbox"
    assert provider.captures == [payment["intent_ref"]]
    assert provider.intents[str(payment["intent_ref"])].amount == 1250
    event = await event_probe.wait_for("payment.created")
    assert event.data == {
        "id": body["id"],
        "orderId": str(order_id),
        "providerRef": payment["intent_ref"],
    }


async def test_not_signed_in_is_401(client: httpx.AsyncClient, orders: OrdersStandIn) -> None:
    order_id, _ = await orders.create()
    r = await client.post(PAY, json={"orderId": str(order_id), "token": "tok_visa"})
    assert r.status_code == 401
    r = await pay(client, order_id, {"session": "not-a-jwt"})
    assert r.status_code == 401


async def test_invalid_body_is_400(client: httpx.AsyncClient, orders: OrdersStandIn) -> None:
    _, cookies = await orders.create()
    for body, field in [
        ({"orderId": "nope", "token": "tok_visa"}, "orderId"),
        ({"token": "tok_visa"}, "orderId"),
        ({"orderId": str(uuid.uuid4()), "token": ""}, "token"),
        ({"orderId": str(uuid.uuid4())}, "token"),
    ]:
        r = await client.post(PAY, json=body, headers=cookie_header(cookies))
        assert r.status_code == 400, (body, r.text)
        assert r.json()["errors"][0]["field"] == field
    r = await client.post(
        PAY, content=b"{", headers=cookie_header(cookies) | {"content-type": "application/json"}
    )
    assert r.status_code == 400


async def test_unknown_order_is_404(client: httpx.AsyncClient, orders: OrdersStandIn) -> None:
    _, cookies = await orders.create()
    r = await pay(client, uuid.uuid4(), cookies)
    assert r.status_code == 404 and message(r) == "Order not found"


async def test_someone_elses_order_is_403(
    client: httpx.AsyncClient, orders: OrdersStandIn, provider: SandboxProvider
) -> None:
    order_id, _ = await orders.create()
    _, stranger = await orders.create()
    r = await pay(client, order_id, stranger)
    assert r.status_code == 403
    assert provider.captures == [] and await orders.payments(order_id) == []


async def test_cancelled_order_is_400_and_nothing_is_charged(
    client: httpx.AsyncClient, orders: OrdersStandIn, provider: SandboxProvider
) -> None:
    # The race one way: the cancellation is in before the payment attempt.
    order_id, cookies = await orders.create()
    await orders.cancel(order_id)
    r = await pay(client, order_id, cookies)
    assert r.status_code == 400 and message(r) == "Order is cancelled"
    assert provider.captures == [] and provider.intents == {}
    assert await orders.payments(order_id) == []


async def test_expired_order_is_400_before_the_expiry_event(
    client: httpx.AsyncClient, orders: OrdersStandIn, provider: SandboxProvider
) -> None:
    order_id, cookies = await orders.create(expires_in=-1)
    assert await orders.replica_status(order_id) == "created"  # no order.cancelled yet
    r = await pay(client, order_id, cookies)
    assert r.status_code == 400 and message(r) == "Order has expired"
    assert provider.captures == [] and await orders.payments(order_id) == []


async def test_already_paid_is_400(
    client: httpx.AsyncClient, orders: OrdersStandIn, provider: SandboxProvider
) -> None:
    _, order_id, cookies = await paid(client, orders)
    r = await pay(client, order_id, cookies, token="tok_mastercard")
    assert r.status_code == 400 and message(r) == "Order is already paid"
    assert len(provider.captures) == 1 and len(await orders.payments(order_id)) == 1


async def test_declined_card_is_402_and_records_nothing(
    client: httpx.AsyncClient,
    orders: OrdersStandIn,
    provider: SandboxProvider,
    event_probe: EventProbe,
) -> None:
    r = await declined_then_paid(client, orders)
    assert len(provider.captures) == 1  # the second card's alone
    created = await event_probe.wait_for("payment.created")
    assert created.data["id"] == r.json()["id"]


async def test_unknown_token_is_400(
    client: httpx.AsyncClient, orders: OrdersStandIn, provider: SandboxProvider
) -> None:
    r, _, _ = await refused(client, orders, "tok_made_up")
    assert r.status_code == 400
    assert r.json()["errors"] == [{"message": "Invalid payment token", "field": "token"}]
    assert provider.captures == []


async def test_double_submit_charges_once(
    client: httpx.AsyncClient,
    orders: OrdersStandIn,
    provider: SandboxProvider,
    event_probe: EventProbe,
    db: TestDatabase,
) -> None:
    order_id, cookies = await orders.create()

    responses = await asyncio.gather(*(pay(client, order_id, cookies) for _ in range(12)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [400] * 11, [r.text for r in responses]
    assert {message(r) for r in responses if r.status_code == 400} == {"Order is already paid"}
    assert len(provider.captures) == 1
    [payment] = await orders.payments(order_id)
    assert payment["status"] == "succeeded"
    await eventually(db.outbox_flushed)
    assert len(await event_probe.all("payment.created")) == 1


async def test_declined_and_good_card_at_once_keep_the_good_payment(
    client: httpx.AsyncClient, orders: OrdersStandIn, provider: SandboxProvider
) -> None:
    """A declined attempt must not erase the record of a twin that is taking the money."""
    for _ in range(5):
        order_id, cookies = await orders.create()
        declined, accepted = await asyncio.gather(
            pay(client, order_id, cookies, token="tok_chargeDeclined"),
            pay(client, order_id, cookies),
        )
        # Both attempts share the order's one intent: when the good card pays it first, the
        # declined attempt's confirm finds it paid and may record the success itself. Either
        # way exactly one answers 201 and the other is refused; the money is taken once.
        answers = sorted([declined.status_code, accepted.status_code])
        assert answers in ([201, 400], [201, 402]), (declined.text, accepted.text)
        [payment] = await orders.payments(order_id)
        assert payment["status"] == "succeeded"
        assert payment["attempts_in_flight"] == 0
    assert len(provider.captures) == 5


async def refunded_payment(
    orders: OrdersStandIn, event_probe: EventProbe, order_id: uuid.UUID, payment_id: str
) -> dict[str, object]:
    """The order's one payment, refunded, once the payment.refunded event names its refund."""
    refunded = await event_probe.wait_for("payment.refunded")
    [payment] = await orders.payments(order_id)
    assert payment["status"] == "refunded"
    assert refunded.data == {
        "id": payment_id,
        "orderId": str(order_id),
        "providerRef": payment["refund_ref"],
    }
    return payment


async def test_cancel_after_payment_refunds(
    client: httpx.AsyncClient,
    orders: OrdersStandIn,
    provider: SandboxProvider,
    event_probe: EventProbe,
) -> None:
    # The race the other way: the payment is in, then the expiry cancels the order.
    r, order_id, _ = await paid(client, orders)
    await orders.cancel(order_id)

    payment = await refunded_payment(orders, event_probe, order_id, r.json()["id"])
    assert provider.refunds == provider.captures == [payment["intent_ref"]]


@pytest.mark.parametrize("cancelled_first", [True, False])
async def test_order_cancelled_and_created_in_either_order_end_cancelled(
    client: httpx.AsyncClient,
    orders: OrdersStandIn,
    provider: SandboxProvider,
    settings: PaymentsSettings,
    cancelled_first: bool,
) -> None:
    order_id, user_id = uuid.uuid4(), uuid.uuid4()
    created = orders.new_order(order_id=order_id, user_id=user_id, price="5.00")
    cancelled = OrderCancelled(id=order_id, version=1, ticket=OrderCancelledTicket(id=uuid.uuid4()))
    first, second = (cancelled, created) if cancelled_first else (created, cancelled)

    # Each handled (committed) before the next is sent: the arrival order is certain.
    await orders.db.wait_handled((await orders.emit(first)).id, timeout=5)
    if cancelled_first:
        assert await orders.replica_status(order_id) is None
        tombstones = await orders.db.fetch("SELECT order_id, version FROM cancelled_orders")
        assert [tuple(t) for t in tombstones] == [(order_id, 1)]
    await orders.db.wait_handled((await orders.emit(second)).id, timeout=5)

    [replica] = await orders.db.fetch("SELECT status, version FROM orders WHERE id = $1", order_id)
    assert (replica["status"], replica["version"]) == ("cancelled", 1)
    assert await orders.db.fetch("SELECT 1 FROM cancelled_orders") == []
    assert await orders.db.fetch("SELECT 1 FROM parked_events") == []
    r = await pay(client, order_id, session_cookie(settings, user_id))
    assert r.status_code == 400 and message(r) == "Order is cancelled"
    assert provider.intents == {} and await orders.payments(order_id) == []


async def test_a_paid_order_is_refunded_by_a_restarted_service(
    settings: PaymentsSettings,
    jetstream: JetStreamContext,
    orders: OrdersStandIn,
    event_probe: EventProbe,
) -> None:
    """The sandbox keeps intents in memory; a restart (or ``parked replay``) forgets them."""
    before = SandboxProvider()
    async with ServiceHarness(create_app(settings, before)).client() as client:
        answer, order_id, _ = await paid(client, orders)

    after = SandboxProvider()  # a new process: no intents in memory
    async with ServiceHarness(create_app(settings, after)).client():
        await orders.cancel(order_id)
        payment = await refunded_payment(orders, event_probe, order_id, answer.json()["id"])
    assert after.refunds == before.captures == [payment["intent_ref"]]
    # The forgotten intent is closed now: paying again takes nothing.
    with pytest.raises(IntentClosedError):
        await after.confirm(intent_ref=str(payment["intent_ref"]), token="tok_visa")


async def test_provider_down_while_charging_leaves_a_pending_payment_that_a_cancel_voids(
    settings: PaymentsSettings,
    jetstream: JetStreamContext,
    orders: OrdersStandIn,
) -> None:
    async def provider_down() -> None:
        raise ProviderUnavailableError()

    down = HookedSandbox(before_capture=provider_down)
    async with ServiceHarness(create_app(settings, down)).client() as client:
        order_id, cookies = await orders.create()
        r = await pay(client, order_id, cookies)
        assert r.status_code == 503, r.text
        assert message(r) == "The payment provider is unavailable; please try again"
        # Outcome unknown: the row stays pending, and the attempt no longer counts as in flight.
        [payment] = await orders.payments(order_id)
        assert (payment["status"], payment["attempts_in_flight"]) == ("pending", 0)

    restarted = SandboxProvider()  # the pending payment's intent is unknown to it
    async with ServiceHarness(create_app(settings, restarted)).client():
        await orders.cancel(order_id)
    [payment] = await orders.payments(order_id)
    assert payment["status"] == "voided" and payment["refund_ref"] is None
    assert restarted.refunds == [] and await orders.db.outbox_subjects() == []


@dataclass
class HookedSandbox(SandboxProvider):
    """The sandbox with a pause inside the charge, to land an event exactly there."""

    before_capture: Callable[[], Awaitable[None]] | None = None
    after_capture: Callable[[], Awaitable[None]] | None = None

    async def confirm(self, *, intent_ref: str, token: str) -> None:
        if self.before_capture:
            await self.before_capture()
        await super().confirm(intent_ref=intent_ref, token=token)
        if self.after_capture:
            await self.after_capture()


@pytest.fixture
def provider() -> HookedSandbox:
    """The sandbox every test here pays with; a test may set its hooks."""
    return HookedSandbox()


async def test_cancelled_while_charging_before_capture_takes_nothing(
    client: httpx.AsyncClient, orders: OrdersStandIn, provider: HookedSandbox
) -> None:
    order_id, cookies = await orders.create()
    provider.before_capture = lambda: orders.cancel(order_id)

    r = await pay(client, order_id, cookies)

    assert r.status_code == 400 and message(r) == "Order is cancelled"
    [payment] = await orders.payments(order_id)
    assert payment["status"] == "voided"  # the unpaid intent was cancelled first
    assert payment["attempts_in_flight"] == 0  # the attempt ended, closed intent or not
    assert provider.captures == [] and provider.refunds == []


@pytest.mark.parametrize(
    ("ending", "answer"), [("cancelled", "Order is cancelled"), ("expired", "Order has expired")]
)
async def test_an_order_ending_while_charged_after_capture_is_refunded(
    client: httpx.AsyncClient,
    orders: OrdersStandIn,
    provider: HookedSandbox,
    event_probe: EventProbe,
    ending: str,
    answer: str,
) -> None:
    order_id, cookies = await orders.create()

    async def end_order() -> None:
        if ending == "cancelled":
            await orders.cancel(order_id)
        else:  # expiresAt passes while the card is charged, before any expiration.complete
            await orders.db.fetch(
                "UPDATE orders SET expires_at = now() - interval '1 second' WHERE id = $1",
                order_id,
            )

    provider.after_capture = end_order
    r = await pay(client, order_id, cookies)

    assert r.status_code == 400 and message(r) == answer
    [payment] = await orders.payments(order_id)
    assert payment["status"] == "refunded" and payment["attempts_in_flight"] == 0
    assert provider.refunds == provider.captures == [payment["intent_ref"]]
    refunded = await event_probe.wait_for("payment.refunded")
    assert refunded.data["orderId"] == str(order_id)
    # Committed with the refund: the outbox holds every event, published or not.
    assert await orders.db.outbox_subjects() == ["payment.refunded"]
    assert await event_probe.all("payment.created") == []


async def test_payment_and_cancellation_racing_never_keep_money(
    settings: PaymentsSettings, jetstream: JetStreamContext, orders: OrdersStandIn
) -> None:
    provider = SandboxProvider()
    async with ServiceHarness(create_app(settings, provider)).client() as client:
        created = [await orders.create() for _ in range(8)]

        # Each order: a payment and its cancellation at the same moment, all orders at once.
        results = await asyncio.gather(
            *(pay(client, order_id, cookies) for order_id, cookies in created),
            *(orders.cancel(order_id, wait=False) for order_id, _ in created),
        )
        for order_id, _ in created:
            await eventually(functools.partial(orders.is_cancelled, order_id))

        responses = results[: len(created)]
        assert all(isinstance(r, httpx.Response) and r.status_code in (201, 400) for r in responses)
        for order_id, _ in created:
            kept = [
                p
                for p in await orders.payments(order_id)
                if p["status"] in ("pending", "succeeded")
            ]
            assert kept == [], f"money kept for cancelled order {order_id}"
        # Every capture was given back, each exactly once.
        assert sorted(provider.refunds) == sorted(provider.captures)
        assert len(set(provider.captures)) == len(provider.captures)


async def test_orders_added_together_the_unusual_left_to_add_order(
    client: httpx.AsyncClient, orders: OrdersStandIn, app: FastAPI
) -> None:
    """The batch handler: several new orders in two statements; an order whose cancellation
    came first (a tombstone waits), or one already here, is left to ``add_order``."""

    usual = [orders.new_order(price="7.25") for _ in range(4)]
    cancelled_first, already_here = orders.new_order(), orders.new_order()
    cancelled = OrderCancelled(
        id=cancelled_first.id, version=1, ticket=OrderCancelledTicket(id=uuid.uuid4())
    )
    await orders.db.wait_handled((await orders.emit(cancelled)).id, timeout=5)
    await orders.db.wait_handled((await orders.emit(already_here)).id, timeout=5)
    batch = [
        Received(order, None) for order in [usual[0], cancelled_first, *usual[1:], already_here]
    ]
    async with transaction(app.state.sessionmaker) as session:
        left = await service.add_orders(session, batch)

    assert [received.event for received in left] == [cancelled_first, already_here]
    rows = await orders.db.fetch(
        "SELECT id, status, version, user_id, price, expires_at FROM orders"
    )
    stored = {row["id"]: tuple(row)[1:] for row in rows}
    for order in usual:
        assert stored[order.id] == (
            "created",
            0,
            order.user_id,
            order.ticket.price,
            order.expires_at,
        )
    assert cancelled_first.id not in stored  # left with its tombstone, for add_order
    assert len(await orders.db.fetch("SELECT 1 FROM cancelled_orders")) == 1


async def test_orders_cancelled_together_the_unusual_left_to_cancel_order(
    client: httpx.AsyncClient, orders: OrdersStandIn, app: FastAPI
) -> None:
    """The batch handler for cancellations: orders here and unpaid are cancelled in three
    statements; one with a payment to release, one not here yet, or an older version is left
    to ``cancel_order``."""

    def cancellation(order_id: uuid.UUID, version: int = 1) -> OrderCancelled:
        return OrderCancelled(
            id=order_id, version=version, ticket=OrderCancelledTicket(id=uuid.uuid4())
        )

    usual = [orders.new_order() for _ in range(3)]
    for order in usual:
        await orders.db.wait_handled((await orders.emit(order)).id, timeout=5)
    _, paid_order, _ = await paid(client, orders)
    not_here = uuid.uuid4()
    cancelled_later = orders.new_order()
    await orders.db.wait_handled((await orders.emit(cancelled_later)).id, timeout=5)
    await orders.db.wait_handled(
        (await orders.emit(cancellation(cancelled_later.id, 2))).id, timeout=5
    )
    unusual = [cancellation(paid_order), cancellation(not_here), cancellation(cancelled_later.id)]
    batch = [Received(event, None) for event in [cancellation(usual[0].id), *unusual]]
    batch += [Received(cancellation(order.id), None) for order in usual[1:]]
    async with transaction(app.state.sessionmaker) as session:
        left = await service.cancel_orders(session, batch)

    assert [received.event for received in left] == unusual
    rows = await orders.db.fetch("SELECT id, status, version FROM orders")
    stored = {row["id"]: (row["status"], row["version"]) for row in rows}
    for order in usual:
        assert stored[order.id] == ("cancelled", 1)
    assert stored[paid_order] == ("created", 0)  # left for cancel_order to refund
    assert stored[cancelled_later.id] == ("cancelled", 2)
    assert not_here not in stored
    [payment] = await orders.payments(paid_order)
    assert payment["status"] == "succeeded"  # untouched here: cancel_order releases it
