"""The platform under test: the local-mode launcher, driven only through its command line,
its data folder (``status.json``: which process has which pid and port) and those pids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketing_common.embedded import free_port
from ticketing_local.datafolder import DataFolder, process_start_ticks
from ticketing_local.launcher import BACKEND_SERVICES

READY_TIMEOUT_SECONDS = 240.0
STOP_TIMEOUT_SECONDS = 60.0
# Variables of this process that must not leak into the platform it starts.
SCRUBBED_ENV = ("DATABASE_URL", "NATS_URL", "JWT_KEY", "TICKETING_DATA_DIR", "STRIPE_KEY", "PORT")


class PlatformError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoints:
    """Where a running platform's servers listen, from its status file."""

    url: str
    postgres_port: int
    nats_url: str

    def database_dsn(self, database: str) -> str:
        # Local mode's PostgreSQL trusts local connections as ``postgres``.
        return f"postgresql://postgres@127.0.0.1:{self.postgres_port}/{database}"


def running_status(data: DataFolder) -> dict[str, Any]:
    """The status of the platform running on ``data``; PlatformError if none is."""
    status = data.read_status()
    if not status or not data.is_locked():
        raise PlatformError(f"the platform is not running on {data.path} (start it first)")
    return status


def endpoints(data: DataFolder) -> Endpoints:
    status = running_status(data)
    processes = status["processes"]
    return Endpoints(
        url=status["url"],
        postgres_port=processes["postgres"]["port"],
        nats_url=f"nats://127.0.0.1:{processes['nats']['port']}",
    )


def live_pid(data: DataFolder, name: str) -> int | None:
    """The pid of process ``name`` (a service, ``nats``, ``postgres``) if it is running now."""
    info = (data.read_status() or {}).get("processes", {}).get(name)
    if not info or process_start_ticks(info["pid"]) != info.get("startTicks"):
        return None
    pid: int = info["pid"]
    return pid


def databases() -> tuple[str, ...]:
    """Every backend service has a database named after it."""
    return BACKEND_SERVICES


class Launcher:
    """``python -m ticketing_local`` on a data folder and a free port, in a subprocess."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data = DataFolder(data_dir)
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _env(self, overrides: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        return env | {"PORT": str(self.port), "NO_COLOR": "1"} | overrides

    def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ticketing_local", "--data-dir", str(self.data.path)],
                env=self._env(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the chaos run reaches the run alone
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._ready():
            if time.monotonic() > deadline:
                self.stop()
                raise PlatformError(
                    f"not ready after {READY_TIMEOUT_SECONDS:g}s; see {self.log_path}"
                )
            time.sleep(0.2)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise PlatformError(
                f"the launcher exited with {self.process.returncode}; see {self.log_path}"
            )
        status = self.data.read_status()
        return bool(status and status.get("ready"))

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it; SIGKILL if it does not stop in time."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def reset(self) -> None:
        """Delete the platform's data, wherever PostgreSQL's went (``ticketing_local reset``)."""
        subprocess.run(
            [sys.executable, "-m", "ticketing_local", "reset", "--data-dir", str(self.data.path)],
            env=self._env({}),
            capture_output=True,
            check=False,
        )
