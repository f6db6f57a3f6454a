"""The cluster's NATS users (``infra/k8s/base/nats/auth.conf``): current, and a working config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from ticketing_common.embedded import EmbeddedNats
from ticketing_common.messaging.permissions import (
    CLUSTER_AUTH_CONF,
    SERVICE_USERS,
    inbox_prefix,
    main,
    password_variable,
)


def test_the_committed_file_is_current() -> None:
    assert main(["--check"]) == 0, "run `make nats-auth` and commit the file"


def test_it_names_every_service_and_holds_no_password() -> None:
    text = CLUSTER_AUTH_CONF.read_text()
    for user in SERVICE_USERS:
        assert f"password: {password_variable(user)}\n" in text
    assert '"monitor"' not in text  # local mode's reader has no place in the cluster


@pytest.fixture
def cluster_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    """A server on the committed file, its password variables set as the Secret sets them."""
    for user in SERVICE_USERS:
        monkeypatch.setenv(password_variable(user).removeprefix("$"), f"{user}-password-123456")
    server = EmbeddedNats(tmp_path / "store", config=CLUSTER_AUTH_CONF)
    server.start()
    yield server
    server.stop()


async def test_the_server_reads_it_and_admits_only_the_users(cluster_nats: EmbeddedNats) -> None:
    for user in SERVICE_USERS:
        nc = await nats.connect(
            cluster_nats.url,
            user=user,
            password=f"{user}-password-123456",
            inbox_prefix=inbox_prefix(user),
            allow_reconnect=False,
        )
        await nc.close()
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(cluster_nats.url, allow_reconnect=False)
