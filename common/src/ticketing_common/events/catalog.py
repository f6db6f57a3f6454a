"""Who publishes and who consumes each subject: the one table of the event flow.

The SPEC's service table, as data. The bus permissions (each service's NATS user may publish only
what it publishes here and consume only what it consumes), the architecture diagrams and the tests
that check each service's consumer all read it, so a change of the flow is made here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketing_common.events.models import (
    Event,
    ExpirationComplete,
    OrderCancelled,
    OrderCreated,
    PaymentCreated,
    PaymentRefunded,
    Subject,
    TicketCreated,
    TicketUpdated,
)


@dataclass(frozen=True)
class ServiceEvents:
    publishes: tuple[Subject, ...]
    consumes: tuple[Subject, ...]
    # Published through JetStream message schedules (``schedule.<service>.*``): the server
    # fires the event, the service never publishes it directly.
    scheduled: bool = False


CATALOG: dict[str, ServiceEvents] = {
    "auth": ServiceEvents(publishes=(), consumes=()),
    "tickets": ServiceEvents(
        publishes=(Subject.TICKET_CREATED, Subject.TICKET_UPDATED),
        consumes=(Subject.ORDER_CREATED, Subject.ORDER_CANCELLED),
    ),
    "orders": ServiceEvents(
        publishes=(Subject.ORDER_CREATED, Subject.ORDER_CANCELLED),
        consumes=(
            Subject.TICKET_CREATED,
            Subject.TICKET_UPDATED,
            Subject.EXPIRATION_COMPLETE,
            Subject.PAYMENT_CREATED,
        ),
    ),
    "expiration": ServiceEvents(
        publishes=(Subject.EXPIRATION_COMPLETE,),
        consumes=(Subject.ORDER_CREATED,),
        scheduled=True,
    ),
    "payments": ServiceEvents(
        publishes=(Subject.PAYMENT_CREATED, Subject.PAYMENT_REFUNDED),
        consumes=(Subject.ORDER_CREATED, Subject.ORDER_CANCELLED),
    ),
}


def publisher_of(subject: Subject) -> str:
    """The one service that publishes ``subject``."""
    (service,) = (name for name, events in CATALOG.items() if subject in events.publishes)
    return service


def scheduled_subjects() -> frozenset[Subject]:
    """The subjects JetStream fires from a message schedule: only these may arrive fired."""
    return frozenset(
        subject for events in CATALOG.values() if events.scheduled for subject in events.publishes
    )


def entity_key(event: Event) -> str:
    """The entity an event changes: a consumer applies the events of one key in stream order,
    those of different keys concurrently.

    An order's events are keyed by its ticket, not by the order: tickets applies them to the
    ticket, and a cancelled order must release it before the next order of it reserves it.
    Expirations and payments are keyed by their order (orders applies both to it).
    """
    match event:
        case TicketCreated() | TicketUpdated():
            return f"ticket:{event.id}"
        case OrderCreated() | OrderCancelled():
            return f"ticket:{event.ticket.id}"
        case ExpirationComplete() | PaymentCreated() | PaymentRefunded():
            return f"order:{event.order_id}"
    raise TypeError(f"no entity key for {type(event).__name__}")
