"""Child processes with their output prefixed by name, restarted when they crash.

Each child runs in its own session, so a Ctrl-C in the terminal reaches the launcher alone and
the launcher stops the children in order. On Linux each child also gets SIGTERM should the
launcher die without stopping it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from ticketing_local.datafolder import process_start_ticks

COLORS = ["36", "32", "33", "35", "34", "96", "92", "93", "95", "94"]
PR_SET_PDEATHSIG = 1
FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 10.0
# A process that ran this long before crashing is restarted at once, not after a backoff.
STABLE_AFTER_SECONDS = 30.0


class Output:
    """Writes every line as ``name | line``, names aligned, coloured on a terminal."""

    def __init__(self, stream: TextIO = sys.stdout, width: int = 10) -> None:
        self.stream = stream
        self.width = width
        self.color = stream.isatty() and "NO_COLOR" not in os.environ
        self._colors: dict[str, str] = {}

    def line(self, name: str, text: str) -> None:
        label = f"{name:<{self.width}}"
        if self.color:
            code = self._colors.setdefault(name, COLORS[len(self._colors) % len(COLORS)])
            label = f"\033[{code}m{label}\033[0m"
        self.stream.write(f"{label} | {text.rstrip()}\n")
        self.stream.flush()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class ManagedProcess:
    """One child process; ``restart=True`` brings it back whenever it exits on its own."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        output: Output,
        *,
        restart: bool = True,
        port: int | None = None,
        on_restart: Callable[[ManagedProcess], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.output = output
        self.restart = restart
        self.port = port
        self.on_restart = on_restart
        self.restarts = 0
        self.process: asyncio.subprocess.Process | None = None
        self.start_ticks: int | None = None
        self._started_at = 0.0
        self._stopping = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[int] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def _spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            limit=1024 * 1024,
        )
        self.start_ticks = process_start_ticks(self.process.pid)
        self._started_at = time.monotonic()
        self._pump = asyncio.create_task(
            self._pump_output(self.process), name=f"output-{self.name}"
        )

    async def _pump_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            self.output.line(self.name, line.decode(errors="replace"))

    async def _supervise(self) -> int:
        delay = FIRST_RESTART_DELAY
        while True:
            assert self.process is not None and self._pump is not None
            code = await self.process.wait()
            await self._pump
            if self._stopping.is_set() or not self.restart:
                return code
            if time.monotonic() - self._started_at > STABLE_AFTER_SECONDS:
                delay = FIRST_RESTART_DELAY
            self.restarts += 1
            self.output.line(
                "launcher",
                f"{self.name} (pid {self.process.pid}) {describe_exit(code)}; "
                f"restarting it in {delay:g}s (restart #{self.restarts})",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return code
            delay = min(delay * 2, MAX_RESTART_DELAY)
            await self._spawn()
            self.output.line("launcher", f"{self.name} restarted (pid {self.pid})")
            if self.on_restart:
                self.on_restart(self)

    def kill(self) -> None:
        """SIGKILL at once, and no restart."""
        self._stopping.set()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def stop(self, timeout: float) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout`` seconds."""
        self._stopping.set()
        process = self.process
        if process is not None and process.returncode is None:
            # The whole process group: whatever the service started goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                self.output.line(
                    "launcher", f"{self.name} did not stop in {timeout:g}s; killing it"
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._supervisor is not None:
            await asyncio.gather(self._supervisor, return_exceptions=True)
