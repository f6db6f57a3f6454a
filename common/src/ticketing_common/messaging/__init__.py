"""The event machinery on NATS JetStream.

- ``streams``: the stream every event lives in, created idempotently at start-up.
- ``outbox``: ``publish()`` (``publish_all()`` for several) writes events in the caller's
  transaction; the relay sends them.
- ``consumer``: durable pull consumers whose handlers run once per event id (the inbox), one
  event at a time or, with a batch handler, several at once.
- ``parking``: events parked by the consumer, those waiting behind them, and their replay.
- ``tables``: the outbox, inbox and parked-event tables every service database has.
"""

from ticketing_common.messaging.consumer import (
    Consumer,
    ConsumerRunner,
    Received,
    RetryLater,
    TemporaryFailure,
)
from ticketing_common.messaging.outbox import OutboxRelay, Outgoing, publish, publish_all
from ticketing_common.messaging.streams import ensure_stream

__all__ = [
    "Consumer",
    "ConsumerRunner",
    "OutboxRelay",
    "Outgoing",
    "Received",
    "RetryLater",
    "TemporaryFailure",
    "ensure_stream",
    "publish",
    "publish_all",
]
