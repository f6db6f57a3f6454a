"""A service's one connection to NATS, as its own user (``NATS_USER`` / ``NATS_PASSWORD``).

The client retries for as long as NATS is unreachable (it may start after us, or restart), but
credentials the server refuses are final: retrying cannot fix them, so start-up fails at once
with a message that names the user (never the password, which goes in the CONNECT only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client as NatsClient

from ticketing_common.messaging.permissions import inbox_prefix
from ticketing_common.settings import ServiceSettings

log = logging.getLogger(__name__)


class BusCredentialsRefusedError(RuntimeError):
    """NATS refused the service's user or password."""


def is_authorization_error(exc: BaseException) -> bool:
    return "authorization violation" in str(exc).lower()


async def connect_nats(settings: ServiceSettings) -> NatsClient:
    options: dict[str, Any] = {
        "name": settings.service_name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "drain_timeout": 5,
    }
    if settings.nats_user and settings.nats_password:
        options |= {
            "user": settings.nats_user,
            "password": settings.nats_password.get_secret_value(),
            # The user's rights allow replies on this prefix only (see messaging.permissions).
            "inbox_prefix": inbox_prefix(settings.nats_user),
        }
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        # Permission violations land here too: a refused publish must show in the logs.
        if is_authorization_error(exc):
            refused.set()
        log.warning("NATS: %r", exc)

    nc = NatsClient()
    connecting = asyncio.ensure_future(nc.connect(settings.nats_url, error_cb=on_error, **options))
    refusal = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({connecting, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refusal.cancel()
        if not connecting.done():  # refused (or we were cancelled): stop retrying
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
            with contextlib.suppress(Exception):
                await nc.close()
    if connecting.cancelled():
        who = f"user {settings.nats_user!r}" if settings.nats_user else "a connection without one"
        raise BusCredentialsRefusedError(f"NATS refused {who}: check NATS_USER and NATS_PASSWORD")
    connecting.result()  # raises what the client raised
    return nc
