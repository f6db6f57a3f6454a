"""Paying for an order, and giving the money back when the order ends cancelled.

The invariant: an order that ends cancelled keeps no payment; one that ends complete was paid
exactly once. How each path keeps it:

- One payment row per order (unique ``order_id``) and one intent per order at the provider
  (idempotency key per order): concurrent or retried requests share the intent, which takes money
  at most once, and only one of them records the success (201); the others get "already paid".
- The row is written ``pending`` *before* the provider is asked to charge, in the transaction that
  checks the order under a row lock. order.cancelled takes the same lock, so whichever comes second
  sees the other: a cancellation releases (refunds, or cancels the unpaid intent of) any pending or
  succeeded payment; a payment finishing after the cancellation (or after ``expiresAt``) releases
  its own charge at once and answers 400. A pending row left by a crash is released the same way
  when the order expires.
- No database transaction is held open while the provider is called, except for the release
  itself, which must not be lost between the refund and its record.

Transactions: the event handlers work in the consumer's unit of work, like every service. A
charge cannot: its provider calls must fall between transactions. So ``create_payment`` takes
the sessionmaker and runs its own short units of work (check, claim, record, end of attempt),
each committed as its block ends; the provider's prepare and confirm run in between, with no
transaction open.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

from sqlalchemy import (
    DateTime,
    Integer,
    Numeric,
    Text,
    any_,
    bindparam,
    delete,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from payments.models import Base, CancelledOrder, Order, Payment, PaymentStatus
from payments.providers import (
    IntentClosedError,
    InvalidPaymentTokenError,
    PaymentDeclinedError,
    PaymentProvider,
    PaymentRejectedError,
)
from ticketing_common.auth import UserClaims
from ticketing_common.clock import utcnow
from ticketing_common.db import DriverStatement, advisory_xact_locks, transaction
from ticketing_common.errors import BadRequestError, ForbiddenError, NotFoundError
from ticketing_common.events import (
    OrderCancelled,
    OrderCreated,
    OrderStatus,
    PaymentCreated,
    PaymentRefunded,
)
from ticketing_common.messaging import Received, publish

log = logging.getLogger(__name__)


class OrderNotFoundError(NotFoundError):
    message = "Order not found"


class NotYourOrderError(ForbiddenError):
    message = "You can only pay for your own orders"


class OrderCancelledError(BadRequestError):
    message = "Order is cancelled"


class OrderExpiredError(BadRequestError):
    message = "Order has expired"


class AlreadyPaidError(BadRequestError):
    message = "Order is already paid"


class PaymentStateError(RuntimeError):
    """An invariant of the payment records does not hold: a bug, never a user error."""


async def _order(session: AsyncSession, order_id: uuid.UUID, *, lock: bool = False) -> Order | None:
    """The order replica, as stored now (with ``lock``: row-locked until commit)."""
    query = select(Order).where(Order.id == order_id).execution_options(populate_existing=True)
    return await session.scalar(query.with_for_update() if lock else query)


async def _payment(session: AsyncSession, order_id: uuid.UUID) -> Payment | None:
    return await session.scalar(
        select(Payment)
        .where(Payment.order_id == order_id)
        .execution_options(populate_existing=True)
    )


def _check_payable(order: Order | None, payment: Payment | None, user: UserClaims) -> Order:
    if order is None:
        raise OrderNotFoundError()
    if order.user_id != user.id:
        raise NotYourOrderError()
    if order.status == OrderStatus.CANCELLED:
        raise OrderCancelledError()
    if payment is not None and payment.status == PaymentStatus.SUCCEEDED:
        raise AlreadyPaidError()
    if payment is not None and payment.status in (PaymentStatus.REFUNDED, PaymentStatus.VOIDED):
        raise OrderCancelledError()  # released with an expiry the replica has not heard of yet
    # Past expiresAt the order is as good as cancelled, even before expiration.complete lands.
    if order.expires_at <= utcnow():
        raise OrderExpiredError()
    return order


async def create_payment(
    sessionmaker: async_sessionmaker[AsyncSession],
    provider: PaymentProvider,
    user: UserClaims,
    order_id: uuid.UUID,
    token: str,
    currency: str,
) -> Payment:
    # 1. Cheap checks first: no provider call for an order that cannot be paid.
    async with transaction(sessionmaker) as session:
        payable = await _order(session, order_id), await _payment(session, order_id)
        amount: Decimal = _check_payable(*payable, user).price

    # 2. The order's one intent (the same for every attempt at this order).
    intent_ref = await provider.prepare(order_id=order_id, amount=amount, currency=currency)

    # 3. Claim: record the attempt as pending under the order's lock, before any money moves.
    await _claim(sessionmaker, provider, user, order_id, intent_ref, amount, currency)

    # 4. Charge (no transaction open), then 5. record the outcome, checking again under the
    #    lock: the order may have been cancelled (or expired) while the card was being charged.
    #    However the attempt ends, it stops counting as in flight (the one place it does).
    charged_nothing = False
    try:
        try:
            await provider.confirm(intent_ref=intent_ref, token=token)
        except (PaymentDeclinedError, InvalidPaymentTokenError, PaymentRejectedError):
            charged_nothing = True
            raise
        except IntentClosedError as exc:
            raise OrderCancelledError() from exc
        # Anything else (the provider unreachable, say) leaves the outcome unknown: the row
        # stays pending, and the order's cancellation or expiry releases it.
        return await _record_success(sessionmaker, provider, order_id, intent_ref)
    finally:
        await _end_attempt(sessionmaker, order_id, charged_nothing=charged_nothing)


async def _claim(
    sessionmaker: async_sessionmaker[AsyncSession],
    provider: PaymentProvider,
    user: UserClaims,
    order_id: uuid.UUID,
    intent_ref: str,
    amount: Decimal,
    currency: str,
) -> None:
    # No unique-violation case to handle: the order's row lock serialises claims.
    async with transaction(sessionmaker) as session:
        order = await _order(session, order_id, lock=True)
        payment = await _payment(session, order_id)
        _check_payable(order, payment, user)
        if payment is None:
            session.add(
                Payment(
                    order_id=order_id,
                    status=PaymentStatus.PENDING,
                    provider=provider.name,
                    intent_ref=intent_ref,
                    amount=amount,
                    currency=currency,
                    attempts_in_flight=1,
                )
            )
        else:
            # A pending one is another attempt under way (or one cut short): this attempt uses
            # the same intent, which can be paid only once.
            payment.attempts_in_flight += 1


async def _end_attempt(
    sessionmaker: async_sessionmaker[AsyncSession], order_id: uuid.UUID, *, charged_nothing: bool
) -> None:
    """This attempt is over. One that surely took no money (declined, say) records nothing:
    its pending row goes, unless another attempt is under way (it may be taking the money)."""
    async with transaction(sessionmaker) as session:
        await _order(session, order_id, lock=True)
        payment = await _payment(session, order_id)
        if payment is None:
            return
        payment.attempts_in_flight = max(payment.attempts_in_flight - 1, 0)
        if (
            charged_nothing
            and payment.attempts_in_flight == 0
            and payment.status == PaymentStatus.PENDING
        ):
            await session.delete(payment)


async def _record_success(
    sessionmaker: async_sessionmaker[AsyncSession],
    provider: PaymentProvider,
    order_id: uuid.UUID,
    intent_ref: str,
) -> Payment:
    async with transaction(sessionmaker) as session:
        order = await _order(session, order_id, lock=True)
        payment = await _payment(session, order_id)
        if order is None or payment is None:
            # Replicas are never deleted, and our claim (still counted in flight) keeps the row.
            raise PaymentStateError(f"order {order_id} or its payment vanished during a charge")
        error: BadRequestError
        if payment.status == PaymentStatus.SUCCEEDED:
            # A concurrent attempt recorded it first: the intent was paid once, for both.
            error = AlreadyPaidError()
        elif order.status == OrderStatus.CANCELLED or order.expires_at <= utcnow():
            await release_payment(session, provider, payment)
            error = (
                OrderCancelledError()
                if order.status == OrderStatus.CANCELLED
                else OrderExpiredError()
            )
        else:
            payment.status = PaymentStatus.SUCCEEDED
            await session.flush()
            await publish(
                session,
                PaymentCreated(id=payment.id, order_id=order_id, provider_ref=intent_ref),
            )
            return payment
    # Committed (the release, if any); now tell the caller why nothing new was kept.
    raise error


async def release_payment(
    session: AsyncSession, provider: PaymentProvider, payment: Payment
) -> None:
    """Give back whatever this payment took (or make sure it never takes anything).

    Runs in the caller's transaction, under the order's lock; publishes payment.refunded when
    money went back.
    """
    if payment.status not in (PaymentStatus.PENDING, PaymentStatus.SUCCEEDED):
        return
    refund_ref = await provider.release(
        intent_ref=payment.intent_ref, paid=payment.status == PaymentStatus.SUCCEEDED
    )
    if refund_ref is None:
        payment.status = PaymentStatus.VOIDED
        return
    payment.status = PaymentStatus.REFUNDED
    payment.refund_ref = refund_ref
    await session.flush()
    await publish(
        session, PaymentRefunded(id=payment.id, order_id=payment.order_id, provider_ref=refund_ref)
    )
    log.info("refunded payment %s of cancelled order %s", payment.id, payment.order_id)


async def _lock_order_events(session: AsyncSession, *order_ids: uuid.UUID) -> None:
    """Serialise the events of each order (any replica) until commit.

    A row lock cannot do it while the replica does not exist yet: without this, an
    order.created and an order.cancelled handled at once could each miss the other's row.
    """
    await advisory_xact_locks(session, (f"order:{order_id}" for order_id in order_ids))


# Built once (every order.created takes them): composing a statement costs more CPU than running
# it. Core (the tables), so that the values are one row's parameters.
_ORDERS = Base.metadata.tables[Order.__tablename__]
_TOMBSTONES = Base.metadata.tables[CancelledOrder.__tablename__]
_PAYMENTS = Base.metadata.tables[Payment.__tablename__]
_ADD_ORDER = (
    insert(_ORDERS)
    .values(
        {
            name: bindparam(name)
            for name in ("id", "version", "status", "user_id", "price", "expires_at")
        }
    )
    .on_conflict_do_nothing(index_elements=[_ORDERS.c.id])
)
# The replica's row added and its tombstone (if its order.cancelled came first) taken, in one
# round trip. Under the order's lock, taken by the statement before: this statement's snapshot
# is taken after that wait, so it sees a tombstone committed meanwhile.
_ADD_ORDER_TAKING_TOMBSTONE = DriverStatement(
    delete(_TOMBSTONES)
    .where(_TOMBSTONES.c.order_id == bindparam("id"))
    .returning(_TOMBSTONES.c.version)
    .add_cte(_ADD_ORDER.cte("added"))
)


async def add_order(session: AsyncSession, provider: PaymentProvider, order: OrderCreated) -> None:
    """A new order joins the replica; if its order.cancelled came first (a tombstone waits),
    it is stored cancelled."""
    await _lock_order_events(session, order.id)
    row = {
        "id": order.id,
        "version": order.version,
        "status": order.status.value,
        "user_id": order.user_id,
        "price": order.ticket.price,
        "expires_at": order.expires_at,
    }
    taken = await _ADD_ORDER_TAKING_TOMBSTONE.one_or_none(session, row)
    tombstone = None if taken is None else taken.version
    if tombstone is not None:
        log.info("order %s was cancelled before it reached us; stored cancelled", order.id)
        replica = await _order(session, order.id, lock=True)
        if replica is None:
            raise PaymentStateError(f"order {order.id} replica missing right after insert")
        await _apply_cancellation(session, provider, replica, tombstone)


async def add_orders(
    session: AsyncSession, orders: list[Received[OrderCreated]]
) -> list[Received[OrderCreated]]:
    """``add_order`` for several orders at once, in two statements: the usual case, an order
    whose cancellation has not come first. Returns the orders left to ``add_order``."""
    await _lock_order_events(session, *(received.event.id for received in orders))
    # Under the orders' locks, taken by the statement before (see _ADD_ORDER_TAKING_TOMBSTONE).
    rows = await _ADD_ORDERS_WITHOUT_TOMBSTONE.all(
        session,
        {
            "ids": [received.event.id for received in orders],
            "versions": [received.event.version for received in orders],
            "statuses": [received.event.status.value for received in orders],
            "user_ids": [received.event.user_id for received in orders],
            "prices": [received.event.ticket.price for received in orders],
            "expiries": [received.event.expires_at for received in orders],
        },
    )
    added = {row.id for row in rows}
    return [received for received in orders if received.event.id not in added]


_ADDING = select(
    func.unnest(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))).label("id"),
    func.unnest(bindparam("versions", type_=ARRAY(Integer))).label("version"),
    func.unnest(bindparam("statuses", type_=ARRAY(Text))).label("status"),
    func.unnest(bindparam("user_ids", type_=ARRAY(UUID(as_uuid=True)))).label("user_id"),
    func.unnest(bindparam("prices", type_=ARRAY(Numeric(11, 2)))).label("price"),
    func.unnest(bindparam("expiries", type_=ARRAY(DateTime(timezone=True)))).label("expires_at"),
).subquery("adding")
# An order with a tombstone (or already here) is not added: add_order takes it.
_ADD_ORDERS_WITHOUT_TOMBSTONE = DriverStatement(
    insert(_ORDERS)
    .from_select(
        list(_ADDING.c.keys()),
        select(_ADDING).where(~exists().where(_TOMBSTONES.c.order_id == _ADDING.c.id)),
    )
    .on_conflict_do_nothing(index_elements=[_ORDERS.c.id])
    .returning(_ORDERS.c.id)
)


async def cancel_order(
    session: AsyncSession, provider: PaymentProvider, order_id: uuid.UUID, version: int
) -> None:
    """Apply an order.cancelled and release the order's payment, if any. Before its
    order.created, leave a tombstone for that event to find."""
    await _lock_order_events(session, order_id)
    order = await _order(session, order_id, lock=True)
    if order is None:
        await session.execute(
            insert(CancelledOrder)
            .values(order_id=order_id, version=version)
            .on_conflict_do_update(
                index_elements=[CancelledOrder.order_id],
                set_={"version": func.greatest(CancelledOrder.version, version)},
            )
        )
        return
    await _apply_cancellation(session, provider, order, version)


async def cancel_orders(
    session: AsyncSession, cancellations: list[Received[OrderCancelled]]
) -> list[Received[OrderCancelled]]:
    """``cancel_order`` for several orders at once, in three statements: the usual case, an
    order here, unpaid, and a newer version. Returns the cancellations left to
    ``cancel_order`` (an order not here yet, one with a payment to release, an older version)."""
    order_ids = [received.event.id for received in cancellations]
    await _lock_order_events(session, *order_ids)
    # The rows too, in the order of their ids: a payment is claimed under its order's row lock,
    # so the next statement, whose snapshot is taken after this wait, sees any claimed meanwhile.
    await _LOCK_ORDERS.all(session, {"ids": sorted(order_ids)})
    rows = await _CANCEL_UNPAID_ORDERS.all(
        session,
        {"ids": order_ids, "versions": [received.event.version for received in cancellations]},
    )
    done = {row.id for row in rows}
    return [received for received in cancellations if received.event.id not in done]


_LOCK_ORDERS = DriverStatement(
    select(_ORDERS.c.id)
    .where(_ORDERS.c.id == any_(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))))
    .order_by(_ORDERS.c.id)
    .with_for_update()
)
_CANCELLING = select(
    func.unnest(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))).label("id"),
    func.unnest(bindparam("versions", type_=ARRAY(Integer))).label("version"),
).subquery("cancelling")
# An order with a payment is left to cancel_order, which releases the payment.
_CANCEL_UNPAID_ORDERS = DriverStatement(
    update(_ORDERS)
    .where(
        _ORDERS.c.id == _CANCELLING.c.id,
        _ORDERS.c.version < _CANCELLING.c.version,
        ~exists().where(_PAYMENTS.c.order_id == _ORDERS.c.id),
    )
    .values(status=OrderStatus.CANCELLED.value, version=_CANCELLING.c.version)
    .returning(_ORDERS.c.id)
)


async def _apply_cancellation(
    session: AsyncSession, provider: PaymentProvider, order: Order, version: int
) -> None:
    """Cancel the locked replica (if ``version`` is newer) and release its payment, if any."""
    # Orders only ever go created -> cancelled here, but versions may skip (orders may bump the
    # version on changes it does not publish): apply anything newer.
    if version > order.version:
        order.status = OrderStatus.CANCELLED
        order.version = version
    if order.status == OrderStatus.CANCELLED and (payment := await _payment(session, order.id)):
        await release_payment(session, provider, payment)
