"""The one stream every event lives in, created (or brought up to date) at start-up."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

log = logging.getLogger(__name__)

STREAM_NAME = "EVENTS"
# Message schedules are published on ``schedule.<name>.<key>``: one subject per timer, so
# publishing a schedule again replaces it instead of adding a second timer.
SCHEDULE_SUBJECT_PREFIX = "schedule"
STREAM_SUBJECTS = [
    "ticket.>",
    "order.>",
    "expiration.>",
    "payment.>",
    f"{SCHEDULE_SUBJECT_PREFIX}.>",
]
DUPLICATE_WINDOW_SECONDS = 10 * 60
MAX_AGE_SECONDS = 14 * 24 * 3600


def stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=STREAM_NAME,
        subjects=STREAM_SUBJECTS,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=MAX_AGE_SECONDS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_msg_schedules=True,
    )


async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the stream, or update it to this config; safe to call from every replica."""
    config = stream_config(replicas)
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        # 10058: "stream name already in use with a different configuration".
        if exc.err_code != 10058:
            raise
        log.info("updating stream %s to the current configuration", STREAM_NAME)
        await js.update_stream(config)
