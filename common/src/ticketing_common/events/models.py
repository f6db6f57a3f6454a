from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from ticketing_common.clock import utcnow
from ticketing_common.models import CamelModel, Money


class Subject(StrEnum):
    TICKET_CREATED = "ticket.created"
    TICKET_UPDATED = "ticket.updated"
    ORDER_CREATED = "order.created"
    ORDER_CANCELLED = "order.cancelled"
    EXPIRATION_COMPLETE = "expiration.complete"
    PAYMENT_CREATED = "payment.created"
    PAYMENT_REFUNDED = "payment.refunded"


class OrderStatus(StrEnum):
    CREATED = "created"
    AWAITING_PAYMENT = "awaiting_payment"
    CANCELLED = "cancelled"
    COMPLETE = "complete"


class Event(CamelModel):
    """The data of one event; each subclass names its subject."""

    subject: ClassVar[Subject]


class TicketCreated(Event):
    subject = Subject.TICKET_CREATED
    id: uuid.UUID
    version: int
    title: str
    price: Money
    user_id: uuid.UUID


class TicketUpdated(Event):
    subject = Subject.TICKET_UPDATED
    id: uuid.UUID
    version: int
    title: str
    price: Money
    user_id: uuid.UUID
    order_id: uuid.UUID | None
    # Set when tickets refused this order's reservation: the ticket's price had changed since
    # the order was priced. Orders cancels that order ("ticket changed, order again").
    refused_order_id: uuid.UUID | None = None


class OrderCreatedTicket(CamelModel):
    id: uuid.UUID
    price: Money


class OrderCreated(Event):
    subject = Subject.ORDER_CREATED
    id: uuid.UUID
    version: int
    status: OrderStatus
    user_id: uuid.UUID
    expires_at: datetime
    ticket: OrderCreatedTicket


class OrderCancelledTicket(CamelModel):
    id: uuid.UUID


class OrderCancelled(Event):
    subject = Subject.ORDER_CANCELLED
    id: uuid.UUID
    version: int
    ticket: OrderCancelledTicket


class ExpirationComplete(Event):
    subject = Subject.EXPIRATION_COMPLETE
    order_id: uuid.UUID


class PaymentCreated(Event):
    subject = Subject.PAYMENT_CREATED
    id: uuid.UUID
    order_id: uuid.UUID
    provider_ref: str


class PaymentRefunded(Event):
    subject = Subject.PAYMENT_REFUNDED
    id: uuid.UUID
    order_id: uuid.UUID
    provider_ref: str


EVENT_TYPES: dict[Subject, type[Event]] = {
    cls.subject: cls
    for cls in (
        TicketCreated,
        TicketUpdated,
        OrderCreated,
        OrderCancelled,
        ExpirationComplete,
        PaymentCreated,
        PaymentRefunded,
    )
}


class EventEnvelope(CamelModel):
    """What travels on the wire: ``{id, subject, occurredAt, data}``.

    ``id`` is also the ``Nats-Msg-Id`` header (JetStream drops a republished duplicate) and the
    key of every consumer's inbox (a redelivered event has no second effect).
    """

    # On the wire every field is always present: the exported schema says so.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    subject: Subject
    occurred_at: datetime = Field(default_factory=utcnow)
    data: dict[str, Any]

    @classmethod
    def wrap(cls, event: Event) -> EventEnvelope:
        return cls(subject=event.subject, data=event.model_dump(mode="json", by_alias=True))

    def event(self) -> Event:
        return EVENT_TYPES[self.subject].model_validate(self.data)
