"""The launcher run by another program: ``python -m ticketing_local`` in a subprocess, on a data
folder and a free port, as the system tests, the chaos run and the bench run it.

Besides HTTP, those programs read only the launcher's status file (which process has which pid
and port), as an operator would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ticketing_common.embedded import free_port
from ticketing_local.datafolder import DataFolder

# Variables of the starting process that must not leak into the platform it starts.
SCRUBBED_ENV = ("DATABASE_URL", "NATS_URL", "JWT_KEY", "TICKETING_DATA_DIR", "STRIPE_KEY", "PORT")


class LauncherStartError(RuntimeError):
    """The launcher ended, or was not ready in time, as it was coming up."""


class LauncherProcess:
    """One launcher process on a data folder; start and stop it as a user would."""

    def __init__(self, data_dir: Path) -> None:
        self.data = DataFolder(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        return env | {"PORT": str(self.port), "NO_COLOR": "1"} | overrides

    def launch(self, log_path: Path, timeout: float, **env: str) -> None:
        """Start it, its output added to ``log_path``, and wait until it is ready. If it ends
        first, or is not ready within ``timeout`` seconds (then it is stopped): LauncherStartError.

        It runs in a session of its own, so a Ctrl-C of the program running it reaches that
        program alone.
        """
        assert self.process is None, "already started"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ticketing_local", "--data-dir", str(self.data.path)],
                env=self.env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._ready(log_path):
            if time.monotonic() > deadline:
                self.stop()
                raise LauncherStartError(f"not ready after {timeout:g}s; see {log_path}")
            time.sleep(0.2)

    def _ready(self, log_path: Path) -> bool:
        assert self.process is not None
        if (code := self.process.poll()) is not None:
            self.process = None
            raise LauncherStartError(f"the launcher exited with {code}; see {log_path}")
        status = self.data.read_status()
        # A status file left by a launcher that was killed says "ready" too: not ours.
        return bool(status and status.get("ready") and status["pid"] == self.process.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """SIGTERM (a service manager) or SIGINT (Ctrl-C); its exit code. If it has not stopped
        within ``timeout`` seconds, its whole session is killed and the answer is None."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None

    def command(
        self, *args: str, data_dir: Path | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``python -m ticketing_local [args]`` on this data folder (or ``data_dir``), run to its
        end beside a running launcher (``status``, ``reset``, a second start)."""
        data = str(data_dir or self.data.path)
        return subprocess.run(
            [sys.executable, "-m", "ticketing_local", *args, "--data-dir", data],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
