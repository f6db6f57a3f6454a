"""``make up`` right after a crash: every process killed, or the launcher alone.

Either way a plain start must work at once, with everything that was committed still there:
orphaned servers of the data folder are stopped, and PostgreSQL's lock file is cleared once
the server that wrote it is gone (never while it lives).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from ticketing_local.datafolder import running_processes

from .local_platform import LocalPlatform, User, available_ids, live_processes

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def platform_env() -> dict[str, str]:
    """A platform of its own: these tests kill every one of its processes."""
    return {"ORDER_EXPIRATION_SECONDS": "60"}


def commit_some_data(new_user: Callable[[], User]) -> tuple[User, str]:
    """A user and a ticket of theirs, both acknowledged (so committed) by the platform."""
    user = new_user()
    return user, user.list_ticket("Recital", "18")["id"]


def assert_still_there(platform: LocalPlatform, user: User, ticket_id: str) -> None:
    with platform.client() as again:
        signin = again.post(
            "/api/users/signin", json={"email": user.email, "password": user.password}
        )
        assert signin.status_code == 200, signin.text
        assert again.get(f"/api/tickets/{ticket_id}").status_code == 200
    assert ticket_id in available_ids(platform)


def processes_of(folder: Path) -> list[int]:
    """Every process of the platform on disk: named by path, or working in PostgreSQL's data."""
    return [
        pid
        for pid, cmdline, cwd in running_processes()
        if str(folder) in cmdline or (cwd is not None and cwd.startswith(str(folder)))
    ]


def test_up_right_after_every_process_was_killed(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    user, ticket_id = commit_some_data(new_user)
    status = platform.status()
    postgres_dir = Path(status["postgresDataDir"])
    victims = {
        *live_processes(status).values(),
        *processes_of(platform.data.path),
        *processes_of(postgres_dir),  # PostgreSQL's backends too, wherever its data lives
    }
    assert platform.process is not None
    victims.discard(platform.process.pid)
    for pid in victims:  # as a power cut or the OOM killer would: no one gets to clean up
        with contextlib.suppress(ProcessLookupError):  # one that just ended by itself
            os.kill(pid, signal.SIGKILL)
    assert platform.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (postgres_dir / "postmaster.pid").exists()  # what made the next start fail

    platform.start()
    assert_still_there(platform, user, ticket_id)


def test_up_right_after_the_launcher_alone_was_killed(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    user, ticket_id = commit_some_data(new_user)
    before = platform.status()["processes"]
    assert platform.stop(signal.SIGKILL) == -signal.SIGKILL
    # Its servers are orphaned, still running; the next start does not wait for anything.
    assert {"postgres", "nats"} <= live_processes({"processes": before}).keys()

    platform.start()
    output = platform.output()
    for name in ("postgres", "nats"):
        assert f"stopping {name} (pid {before[name]['pid']}), left by" in output
    assert live_processes({"processes": before}) == {}
    assert_still_there(platform, user, ticket_id)
