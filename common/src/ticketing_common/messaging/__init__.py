"""The event machinery on NATS JetStream.

- ``streams``: the stream every event lives in, created idempotently at start-up.
- ``outbox``: ``publish()`` writes an event in the caller's transaction; the relay sends it.
- ``consumer``: durable pull consumers whose handlers run once per event id (the inbox).
- ``parking``: events parked by the consumer, those waiting behind them, and their replay.
- ``tables``: the outbox, inbox and parked-event tables every service database has.
"""

from ticketing_common.messaging.consumer import (
    Consumer,
    ConsumerRunner,
    RetryLater,
    TemporaryFailure,
)
from ticketing_common.messaging.outbox import OutboxRelay, publish
from ticketing_common.messaging.streams import ensure_stream

__all__ = [
    "Consumer",
    "ConsumerRunner",
    "OutboxRelay",
    "RetryLater",
    "TemporaryFailure",
    "ensure_stream",
    "publish",
]
