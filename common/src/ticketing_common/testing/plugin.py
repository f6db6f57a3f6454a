"""Pytest fixtures: a real PostgreSQL and a real NATS JetStream server for the whole run.

Set ``DATABASE_URL`` (a server URL whose user may create databases) or ``NATS_URL`` (2.12+) to
use servers you run yourself; otherwise both are started from their wheels on free ports and
stopped at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ticketing_common.database_url import with_driver
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
        yield with_driver(url)
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
