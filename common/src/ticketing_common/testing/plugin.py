"""Pytest fixtures: a real PostgreSQL and a real NATS JetStream server for the whole run.

Set ``DATABASE_URL`` (a server URL whose user may create databases) or ``NATS_URL`` (2.12+) to
use servers you run yourself; otherwise both are started from their wheels on free ports and
stopped at the end of the run. That NATS server admits anyone (tests publish on behalf of every
service); ``secured_nats`` starts one per test that admits only the bus's users.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ticketing_common.messaging.permissions import (
    MONITOR_USER,
    USERS,
    inbox_prefix,
    render_authorization,
)
from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_common.testing.helpers import EventProbe


@dataclass
class NatsServer:
    url: str
    embedded: object | None  # EmbeddedNats when the fixture started it

    def stop(self) -> None:
        """Take NATS away (an outage); only possible for a server the fixture started."""
        if self.embedded is None:
            pytest.skip("NATS_URL points at an external server: cannot simulate an outage")
        self.embedded.stop()  # type: ignore[attr-defined]

    def start(self) -> None:
        self.embedded.start()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def _servers_dir() -> Iterator[Path]:
    # /tmp rather than pytest's tmp_path: PostgreSQL's unprivileged user must reach it as root.
    path = Path(tempfile.mkdtemp(prefix="ticketing-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(_servers_dir: Path) -> Iterator[str]:
    """URL of a PostgreSQL server where tests may create databases."""
    if url := os.environ.get("DATABASE_URL"):
        yield url.replace("postgresql://", "postgresql+asyncpg://", 1)
        return
    from ticketing_common.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(_servers_dir / "postgres", durable=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(_servers_dir: Path) -> Iterator[NatsServer]:
    if url := os.environ.get("NATS_URL"):
        yield NatsServer(url, None)
        return
    from ticketing_common.embedded import EmbeddedNats

    server = EmbeddedNats(_servers_dir / "nats")
    server.start()
    try:
        yield NatsServer(server.url, server)
    finally:
        server.stop()


@dataclass
class SecuredNats:
    """A NATS server that admits only the bus's users (``messaging.permissions``)."""

    url: str
    passwords: dict[str, str]

    def credentials(self, user: str) -> dict[str, Any]:
        """Settings overrides that make a service connect as ``user``."""
        return {"nats_user": user, "nats_password": self.passwords[user]}

    async def connect(self, user: str, **options: Any) -> NatsClient:
        """A client connection as ``user``, with the reply prefix its rights allow."""
        prefix = "_INBOX" if user == MONITOR_USER else inbox_prefix(user)
        return await nats.connect(
            self.url,
            user=user,
            password=self.passwords[user],
            inbox_prefix=prefix,
            allow_reconnect=False,
            **options,
        )


@pytest.fixture
def secured_nats(_servers_dir: Path) -> Iterator[SecuredNats]:
    """A NATS server of its own for one test, every bus user on it with a fresh password."""
    from ticketing_common.embedded import EmbeddedNats

    folder = Path(tempfile.mkdtemp(prefix="nats-secured-", dir=_servers_dir))
    passwords = {user: secrets.token_hex(16) for user in USERS}
    config = folder / "auth.conf"
    config.write_text(render_authorization(passwords))
    server = EmbeddedNats(folder / "store", config=config)
    server.start()
    try:
        yield SecuredNats(server.url, passwords)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def jetstream(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """A JetStream context; the stream is deleted after the test, so each test starts clean."""
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    try:
        yield js
    finally:
        if not nc.is_connected:  # a test that stopped NATS started it again
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(STREAM_NAME)
        await nc.close()


@pytest.fixture
def event_probe(jetstream: JetStreamContext) -> EventProbe:
    return EventProbe(jetstream)
