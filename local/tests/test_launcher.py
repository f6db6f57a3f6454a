"""The launcher's supervision, on a small platform: NATS and one child process.

The launcher runs in its own process (signals are process-wide), started from a script that
keeps its ``_start`` to NATS and a sleeping child, so each test takes a second or two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from ticketing_common.testing.helpers import eventually
from ticketing_local.datafolder import DataFolder, process_start_ticks

SCRIPT = """
import asyncio, sys
from pathlib import Path
from ticketing_local.datafolder import DataFolder
from ticketing_local.launcher import Launcher
from ticketing_local.processes import Output

class SmallLauncher(Launcher):
    async def _start(self):
        await self._start_nats()
        child = [sys.executable, "-c", "import time; time.sleep(120)"]
        await self._start_process("sleeper", child, {}, 0)
        self.ready = True
        self._write_status()

launcher = SmallLauncher(DataFolder(Path(sys.argv[1])), 0, Output())
launcher.infra_first_retry_delay = 0.05
sys.exit(asyncio.run(launcher.run()))
"""


class SmallPlatform:
    def __init__(self, tmp_path: Path) -> None:
        self.data = DataFolder(tmp_path / "data")
        self.log = tmp_path / "launcher.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", SCRIPT, str(self.data.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=os.environ | {"NO_COLOR": "1"},
            )

    async def ready(self) -> dict[str, dict[str, int]]:
        async def check() -> dict[str, dict[str, int]] | None:
            assert self.process.poll() is None, self.output()
            status = self.data.read_status()
            return status["processes"] if status and status.get("ready") else None

        processes: dict[str, dict[str, int]] = await eventually(check, timeout=30)
        return processes

    def exit_code(self) -> int:
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the launcher did not stop\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def alive(processes: dict[str, dict[str, int]]) -> list[str]:
    return [n for n, p in processes.items() if process_start_ticks(p["pid"]) == p["startTicks"]]


@pytest.fixture
def small_platform(tmp_path: Path) -> Iterator[SmallPlatform]:
    platform = SmallPlatform(tmp_path)
    yield platform
    if platform.process.poll() is None:
        os.killpg(platform.process.pid, signal.SIGKILL)
        platform.process.wait()
    platform.data.stop_leftovers(lambda _: None)


async def test_closing_the_terminal_sighup_stops_everything(small_platform: SmallPlatform) -> None:
    processes = await small_platform.ready()
    assert sorted(alive(processes)) == ["nats", "sleeper"]

    small_platform.process.send_signal(signal.SIGHUP)

    assert small_platform.exit_code() == 0, small_platform.output()
    assert alive(processes) == []
    assert "launcher   | stopped" in small_platform.output()


async def test_local_nats_admits_only_the_bus_users(small_platform: SmallPlatform) -> None:
    processes = await small_platform.ready()
    url = f"nats://127.0.0.1:{processes['nats']['port']}"
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False)
    # The monitor's credentials, as a tool reads them from the data folder.
    monitor = DataFolder(small_platform.data.path).monitor_credentials()
    nc = await nats.connect(
        url, user=monitor.user, password=monitor.password, allow_reconnect=False
    )
    await nc.close()


async def test_nats_that_cannot_be_restarted_stops_the_platform_cleanly(
    small_platform: SmallPlatform,
) -> None:
    processes = await small_platform.ready()
    # NATS dies, and its store folder has become a file: every restart fails.
    store = small_platform.data.nats_dir
    store.rename(store.with_name("nats-moved"))
    store.write_text("not a folder\n")
    os.kill(processes["nats"]["pid"], signal.SIGKILL)

    assert small_platform.exit_code() == 1, small_platform.output()
    output = small_platform.output()
    assert "nats killed by SIGKILL; restarting it" in output
    assert "attempt 4 of 4" in output and "trying nats again in 0.2s" in output
    assert (
        "error: nats died and could not be restarted after 4 attempts; stopping everything"
        in output
    )
    assert "Traceback" not in output
    assert alive(processes) == []


def test_overrides_in_the_environment_reach_every_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ticketing_common.embedded import EmbeddedNats, EmbeddedPostgres
    from ticketing_local.launcher import Launcher
    from ticketing_local.processes import Output

    monkeypatch.setenv("STRIPE_KEY", "sk_test_passed_through")
    monkeypatch.setenv("ORDER_EXPIRATION_SECONDS", "42")
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("DATABASE_URL", "postgresql://somewhere-else/db")
    monkeypatch.setenv("NATS_PASSWORD", "not-for-the-edge")
    launcher = Launcher(DataFolder(tmp_path / "data"), 9999, Output())
    launcher.postgres = EmbeddedPostgres(tmp_path / "pg")  # configured, not started
    launcher.nats = EmbeddedNats(tmp_path / "nats")

    env = launcher._service_env("the-key")

    assert env["STRIPE_KEY"] == "sk_test_passed_through"
    assert env["ORDER_EXPIRATION_SECONDS"] == "42"
    assert env["JWT_KEY"] == "the-key"
    assert env["NATS_URL"] == launcher.nats.url
    # The edge's port and a foreign database are not the services' to take.
    assert "PORT" not in env
    assert "DATABASE_URL" not in env
    # Each service connects to NATS as its own user; nobody else gets a password.
    assert "NATS_PASSWORD" not in env
    passwords = launcher.data.nats_passwords()
    assert launcher._nats_credentials("orders") == {
        "NATS_USER": "orders",
        "NATS_PASSWORD": passwords["orders"],
    }
    assert launcher._nats_credentials("client") == {}
