"""The event contracts: one envelope, one pydantic model per subject.

These models are the only thing services share about each other. ``schema.py`` exports them as
JSON Schema and AsyncAPI so a service in any language can join.
"""

from ticketing_common.events.models import (
    EVENT_TYPES,
    Event,
    EventEnvelope,
    ExpirationComplete,
    OrderCancelled,
    OrderCancelledTicket,
    OrderCreated,
    OrderCreatedTicket,
    OrderStatus,
    PaymentCreated,
    PaymentRefunded,
    Subject,
    TicketCreated,
    TicketUpdated,
)

__all__ = [
    "EVENT_TYPES",
    "Event",
    "EventEnvelope",
    "ExpirationComplete",
    "OrderCancelled",
    "OrderCancelledTicket",
    "OrderCreated",
    "OrderCreatedTicket",
    "OrderStatus",
    "PaymentCreated",
    "PaymentRefunded",
    "Subject",
    "TicketCreated",
    "TicketUpdated",
]
