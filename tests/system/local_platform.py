"""The platform as ``make up`` runs it, for the system tests: start it, drive it, crash it.

``platform`` is ``python -m ticketing_local`` in a subprocess, on a temporary data folder and a
free port: one shared by the modules that only use it, one of its own for a module that kills or
restarts its processes (see conftest.py). Besides HTTP, tests read only the launcher's status
file (which process has which pid), to play the part of a crash and to check that stopping
leaves nothing behind. A step that depends on another service having caught up is polled with
a timeout (``wait_until``), as a patient user would retry; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ticketing_local.as_child import LauncherProcess, LauncherStartError
from ticketing_local.datafolder import process_start_ticks

T = TypeVar("T")

READY_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
# The shared platform's reservations (conftest.py): short enough for a test to wait one out,
# long enough to pay comfortably before.
SHARED_EXPIRATION_SECONDS = 15


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


class LocalPlatform(LauncherProcess):
    """One launcher process on a data folder; start and stop it as a user would."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        super().__init__(data_dir)
        self.log_dir = log_dir
        self._log_path: Path | None = None
        self._runs = 0
        self.started_with: dict[str, str] = {}  # the settings of the last start

    def start(self, **env: str) -> None:
        self.started_with = env
        self._runs += 1
        self._log_path = self.log_dir / f"launcher-{self._runs}.log"
        try:
            self.launch(self._log_path, READY_TIMEOUT, **env)
        except LauncherStartError as failed:
            raise AssertionError(f"{failed}\n{self.output()}") from None

    def status(self) -> dict[str, Any]:
        status = self.data.read_status()
        assert status is not None, "no status file: is the platform running?"
        return status

    def output(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path else ""

    def output_of_every_start(self) -> str:
        logs = (self.log_dir / f"launcher-{run}.log" for run in range(1, self._runs + 1))
        return "".join(log.read_text(errors="replace") for log in logs if log.exists())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (a service manager) or SIGINT (Ctrl-C); the launcher's exit code."""
        assert self.process is not None
        code = super().stop(sig, timeout)
        assert code is not None, f"the launcher did not stop in {timeout:g}s\n{self.output()}"
        return code

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, trust_env=False)


def live_processes(status: dict[str, Any]) -> dict[str, int]:
    """The processes named in a status file that are still running (same pid, same start)."""
    return {
        name: info["pid"]
        for name, info in status["processes"].items()
        if process_start_ticks(info["pid"]) == info["startTicks"]
    }


def processes_mentioning(path: Path) -> list[str]:
    """Command lines of running processes that name ``path`` (postgres -D, nats-server -sd)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and process_start_ticks(int(entry.name)) is not None:
            found.append(f"{entry.name}: {cmdline}")
    return found


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
        platform.command("reset")


EVENTUAL = 30.0  # seconds for an event to travel from one service to another


class User:
    def __init__(self, platform: LocalPlatform) -> None:
        self.http = platform.client()
        self.email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        self.password = "correct horse battery"

    def sign_up(self) -> User:
        response = self.http.post(
            "/api/users/signup", json={"email": self.email, "password": self.password}
        )
        assert response.status_code == 201, response.text
        assert "session" in response.cookies
        return self

    def list_ticket(self, title: str, price: str) -> dict[str, Any]:
        response = self.http.post("/api/tickets", json={"title": title, "price": price})
        assert response.status_code == 201, response.text
        ticket: dict[str, Any] = response.json()
        return ticket

    def order(self, ticket_id: str) -> dict[str, Any]:
        """Reserve a ticket, retrying while orders has not yet heard of it (404).

        The Idempotency-Key makes the retries safe: never a second order.
        """
        key = str(uuid.uuid4())

        def attempt() -> httpx.Response | None:
            response = self.post_quietly(
                "/api/orders", {"ticketId": ticket_id}, headers={"Idempotency-Key": key}
            )
            return None if response is None or response.status_code in (404, 503) else response

        response = wait_until(attempt, EVENTUAL, "orders to know the ticket")
        assert response.status_code == 201, response.text
        order: dict[str, Any] = response.json()
        return order

    def pay(self, order_id: str, token: str = "tok_visa") -> httpx.Response:
        """Pay, retrying while payments has not yet heard of the order or is restarting."""

        def attempt() -> httpx.Response | None:
            response = self.post_quietly("/api/payments", {"orderId": order_id, "token": token})
            return None if response is None or response.status_code in (404, 503) else response

        response: httpx.Response = wait_until(attempt, EVENTUAL, "payments to know the order")
        return response

    def order_status(self, order_id: str) -> str | None:
        try:
            response = self.http.get(f"/api/orders/{order_id}")
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        status: str = response.json()["status"]
        return status

    def post_quietly(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Response | None:
        try:
            return self.http.post(path, json=body, headers=headers)
        except httpx.TransportError:
            return None


def available_ids(platform: LocalPlatform) -> set[str]:
    with platform.client() as http:
        response = http.get("/api/tickets", params={"limit": 200})
    assert response.status_code == 200, response.text
    return {t["id"] for t in response.json()}
