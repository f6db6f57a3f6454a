"""The platform under test: the local-mode launcher, driven only through its command line,
its data folder (``status.json``: which process has which pid and port) and those pids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketing_local.as_child import LauncherProcess, LauncherStartError
from ticketing_local.datafolder import DataFolder, process_start_ticks
from ticketing_local.launcher import BACKEND_SERVICES

READY_TIMEOUT_SECONDS = 240.0


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


class Launcher(LauncherProcess):
    """``python -m ticketing_local`` on a data folder and a free port, in a subprocess."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        super().__init__(data_dir)
        self.log_path = log_path

    def start(self, env: dict[str, str]) -> None:
        try:
            self.launch(self.log_path, READY_TIMEOUT_SECONDS, **env)
        except LauncherStartError as failed:
            raise PlatformError(str(failed)) from None

    def reset(self) -> None:
        """Delete the platform's data, wherever PostgreSQL's went (``ticketing_local reset``)."""
        self.command("reset")
