"""The platform as ``make up`` runs it, for the system tests to drive over HTTP.

``python -m ticketing_local`` in a subprocess, on a temporary data folder and a free port;
nothing sleeps for a fixed time: a step that waits polls with a timeout (``wait_until``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from ticketing_common.embedded import free_port
from ticketing_local.datafolder import DataFolder

T = TypeVar("T")

READY_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
# Variables of the test process that must not leak into the platform under test.
SCRUBBED_ENV = ("DATABASE_URL", "NATS_URL", "JWT_KEY", "TICKETING_DATA_DIR", "STRIPE_KEY", "PORT")


def wait_until(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {result!r})"
            )
        time.sleep(interval)


class LocalPlatform:
    """One launcher process on a data folder; start and stop it as a user would."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data = DataFolder(data_dir)
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._runs = 0

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        return env | {"PORT": str(self.port), "NO_COLOR": "1"} | overrides

    def start(self, **env: str) -> None:
        assert self.process is None, "already started"
        self._runs += 1
        self._log_path = self.log_dir / f"launcher-{self._runs}.log"
        with self._log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ticketing_local", "--data-dir", str(self.data.path)],
                env=self.env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._ready, READY_TIMEOUT, f"the platform to be ready\n{self.output()}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the launcher exited with {self.process.returncode}\n{self.output()}"
            )
        status = self.data.read_status()
        return bool(status and status.get("ready"))

    def status(self) -> dict[str, Any]:
        status = self.data.read_status()
        assert status is not None, "no status file: is the platform running?"
        return status

    def output(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (a service manager) or SIGINT (Ctrl-C); the launcher's exit code."""
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the launcher did not stop in {STOP_TIMEOUT}s\n{self.output()}"
            ) from None
        finally:
            self.process = None
        return code

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, trust_env=False)


@contextlib.contextmanager
def running_platform(base: Path, **env: str) -> Iterator[LocalPlatform]:
    """A platform on a data folder under ``base``, stopped and its data deleted after."""
    platform = LocalPlatform(base / "data", base)
    platform.start(**env)
    try:
        yield platform
    finally:
        if platform.process is not None:
            platform.stop()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ticketing_local",
                "reset",
                "--data-dir",
                str(platform.data.path),
            ],
            env=platform.env(),
            capture_output=True,
            check=False,
        )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    # tmp_path_factory's folders are private (0700): as root this also exercises PostgreSQL's
    # data moving somewhere its unprivileged user can reach.
    with running_platform(
        tmp_path_factory.mktemp("local-mode"), ORDER_EXPIRATION_SECONDS="60"
    ) as platform:
        yield platform
