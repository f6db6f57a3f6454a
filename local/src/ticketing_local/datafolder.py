"""The one folder local mode keeps its state in (``.data/`` in the repository by default).

It holds the PostgreSQL cluster, the NATS JetStream store, the generated ``JWT_KEY`` and NATS
passwords (one per bus user, ``nats_passwords.json``), a lock that tells a second launcher one
is already running, and ``status.json``: what is running where (pids, ports), for people and
for the system tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketing_common.embedded import PG_SYSTEM_USER
from ticketing_common.messaging.permissions import MONITOR_USER, USERS, render_authorization

LOCK_FILE = "launcher.lock"
# Leftovers are stopped in this order (the rest, services and the edge, before these) ...
SERVER_ORDER = {"nats": 1, "postgres": 2}
# ... PostgreSQL with a fast shutdown (SIGTERM would wait for its clients to leave).
STOP_SIGNAL = {"postgres": signal.SIGINT}
STATUS_FILE = "status.json"
JWT_KEY_FILE = "jwt_key"
NATS_PASSWORDS_FILE = "nats_passwords.json"
NATS_CONFIG_FILE = "nats.conf"
# Where PostgreSQL's data went when it could not live in the data folder (see relocate_postgres).
POSTGRES_LOCATION_FILE = "postgres.location"


@dataclass(frozen=True)
class NatsCredentials:
    user: str
    password: str


class AlreadyRunningError(RuntimeError):
    def __init__(self, folder: Path, status: dict[str, Any] | None) -> None:
        where = ""
        if status:
            where = f" (launcher pid {status.get('pid')}, {status.get('url')})"
        super().__init__(
            f"Ticketing is already running with the data in {folder}{where}. "
            "Stop it first (Ctrl-C in its terminal), or use another data folder "
            "(--data-dir) and PORT."
        )


class DataFolder:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._lock_fd: int | None = None

    # -- the lock: one launcher per folder ---------------------------------------------------

    def lock(self) -> None:
        """Take the folder, or raise AlreadyRunningError if a live launcher holds it.

        An flock dies with its process, so a launcher killed with SIGKILL leaves no stale lock.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunningError(self.path, self.read_status()) from None
        self._lock_fd = fd

    def is_locked(self) -> bool:
        """True while a launcher holds the folder."""
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock taken here
        return False

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- state -------------------------------------------------------------------------------

    @property
    def nats_dir(self) -> Path:
        return self.path / "nats"

    @property
    def edge_dir(self) -> Path:
        """Caddy's configuration and the only folder it may write to."""
        return self.path / "edge"

    @property
    def postgres_dir(self) -> Path:
        pointer = self.path / POSTGRES_LOCATION_FILE
        if pointer.exists():
            return Path(pointer.read_text().strip())
        return self.path / "postgres"

    def relocate_postgres(self, log: Callable[[str], None] = lambda _: None) -> Path:
        """Move PostgreSQL's data to a folder its unprivileged user can reach.

        As root, PostgreSQL runs as a system user that must enter every folder above its data;
        a data folder under a private home (0700) is closed to it. The data then lives under
        /var/tmp (kept across reboots), named after this folder, and a pointer here says where.
        """
        parent = self.shared_postgres_parent()
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=0o700)
        if (problem := folder_problem(parent)) is not None:
            # Another user's folder, or a symlink, sits at the usual name (anyone may create
            # names in /var/tmp): never follow it; take a fresh folder of our own instead.
            parent = Path(tempfile.mkdtemp(prefix=f"{parent.name}-", dir=parent.parent))
            log(f"warning: {problem}, so not used; PostgreSQL's data goes to {parent} instead")
        parent.chmod(0o755)  # checked above: a real folder of ours, not a symlink
        shutil.rmtree(self.path / "postgres", ignore_errors=True)
        (self.path / POSTGRES_LOCATION_FILE).write_text(f"{parent / 'postgres'}\n")
        return parent / "postgres"

    def shared_postgres_parent(self) -> Path:
        """The usual folder for relocated PostgreSQL data: under /var/tmp, named after us."""
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:12]
        base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path("/tmp")
        return base / f"ticketing-local-{digest}"

    def checked_postgres_dir(self, log: Callable[[str], None] = lambda _: None) -> Path:
        """``postgres_dir``, once a relocated one's folder is known to be still ours.

        /var/tmp is cleaned of old entries on some systems, and another user may then put a
        folder or a symlink of their own at the name; the data then moves to a fresh folder.
        """
        path = self.postgres_dir
        if path.parent == self.path or (problem := folder_problem(path.parent)) is None:
            return path
        log(f"warning: {problem}; PostgreSQL's data there is not used")
        return self.relocate_postgres(log)

    def jwt_key(self) -> str:
        """The key generated on the first start, kept so sessions survive a restart."""
        path = self.path / JWT_KEY_FILE
        if path.exists():
            return path.read_text().strip()
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key

    def nats_passwords(self) -> dict[str, str]:
        """Each bus user's password, generated on the first start and kept (owner-only)."""
        path = self.path / NATS_PASSWORDS_FILE
        kept: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        passwords = {user: kept.get(user) or secrets.token_hex(24) for user in USERS}
        if passwords != kept:  # first start, or a user added since
            _write_private(path, json.dumps(passwords, indent=2) + "\n")
        return passwords

    def monitor_credentials(self) -> NatsCredentials:
        """The read-only ``monitor`` user, for tools and tests that watch the event stream."""
        return NatsCredentials(MONITOR_USER, self.nats_passwords()[MONITOR_USER])

    def nats_config(self) -> Path:
        """The NATS server's configuration: every bus user and its rights, from the catalog.

        Written at every start, so the rights follow the code."""
        path = self.path / NATS_CONFIG_FILE
        _write_private(path, render_authorization(self.nats_passwords()))
        return path

    def wipe(self) -> list[Path]:
        """Delete every piece of state (the caller holds the lock); return what was removed."""
        removed = []
        postgres = self.postgres_dir
        if postgres.parent != self.path and folder_problem(postgres.parent) is None:
            shutil.rmtree(postgres.parent)  # the relocated folder made by relocate_postgres
            removed.append(postgres.parent)
        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        return removed

    # -- status ------------------------------------------------------------------------------

    def read_status(self) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = json.loads((self.path / STATUS_FILE).read_text())
            return status
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_status(self, status: dict[str, Any]) -> None:
        path = self.path / STATUS_FILE
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(status, indent=2) + "\n")
        staging.replace(path)  # atomic: a reader never sees half a file

    def clear_status(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / STATUS_FILE).unlink()

    def stop_leftovers(self, log: Callable[[str], None]) -> None:
        """Stop what a launcher that did not stop cleanly left running on this folder.

        A launcher killed outright (SIGKILL) leaves its servers orphaned: its status file lists
        them, and each that is still the same process (same start time) is stopped, services
        and the edge first, PostgreSQL last. Servers of this folder the status file does not
        know (it was lost, or written before they started) are found by what they use: the
        edge's configuration, NATS's store, PostgreSQL's data folder. Then PostgreSQL's lock
        file, once nothing of the old server lives, is cleared.
        """
        status = self.read_status() or {}
        processes = status.get("processes", {})
        for name in sorted(processes, key=lambda n: SERVER_ORDER.get(n, 0)):
            info = processes[name]
            pid, ticks = info.get("pid"), info.get("startTicks")
            if pid and ticks is not None and process_start_ticks(pid) == ticks:
                log(f"stopping {name} (pid {pid}), left by a launcher that did not stop cleanly")
                terminate(pid, timeout=15, sig=STOP_SIGNAL.get(name, signal.SIGTERM))
        for name, pid in self._unlisted_servers():
            log(f"stopping {name} (pid {pid}), a server of {self.path} nobody was managing")
            terminate(pid, timeout=15, sig=STOP_SIGNAL.get(name, signal.SIGTERM))
        self.clear_stale_postgres_lock(log)
        self.clear_status()

    def _unlisted_servers(self) -> list[tuple[str, int]]:
        """Running servers of this folder, found by the paths they were started with."""
        postgres = str(self.postgres_dir.resolve())
        found = []
        for pid, cmdline, cwd in running_processes():
            if str(self.edge_dir / "caddy.json") in cmdline:
                found.append(("edge", pid))
            elif str(self.nats_dir) in cmdline:
                found.append(("nats", pid))
            elif postgres in cmdline and cwd == postgres:  # the postmaster, not its children
                found.append(("postgres", pid))
        return sorted(found, key=lambda item: SERVER_ORDER.get(item[0], 0))

    def clear_stale_postgres_lock(self, log: Callable[[str], None], timeout: float = 30.0) -> None:
        """Remove ``postmaster.pid`` once no process of the server that wrote it is left.

        A server killed outright leaves the file behind, and its backends live on for a moment
        (they exit when they notice); PostgreSQL refuses to start while it believes the file's
        owner may still be there. Every process of a PostgreSQL server works in its data
        folder, so "nothing runs in the folder" is "the owner is gone". While any does, the
        file stays; backends still there after ``timeout`` are orphans of a dead server and
        are killed.
        """
        folder = self.postgres_dir.resolve()
        lock = folder / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while remaining := [pid for pid, _, cwd in running_processes() if cwd == str(folder)]:
            if time.monotonic() > deadline:
                log(f"killing processes of a PostgreSQL that is gone: {remaining}")
                for pid in remaining:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.1)
        if lock.exists():
            log(f"removing {lock}: the PostgreSQL that wrote it is gone")
            lock.unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only, replacing ``path`` at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    staging.replace(path)


def folder_problem(path: Path) -> str | None:
    """Why ``path`` (in a folder anyone can write to, such as /var/tmp) is not safely ours.

    None when it is a real folder (not a symlink) owned by us, root or PostgreSQL's system
    user, that nobody else can write to: then nobody else can have put anything inside.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a folder"
    trusted = {0, os.geteuid()}
    with contextlib.suppress(KeyError):
        trusted.add(pwd.getpwnam(PG_SYSTEM_USER).pw_uid)
    if info.st_uid not in trusted:
        return f"{path} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users"
    return None


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it are space separated.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited; only its parent's wait is missing
        return None
    return int(fields[19])


def running_processes() -> Iterator[tuple[int, str, str | None]]:
    """(pid, command line, working folder) of every live process we may look at."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or process_start_ticks(int(entry.name)) is None:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        try:
            cwd: str | None = os.readlink(entry / "cwd")
        except OSError:  # another user's process, or gone meanwhile
            cwd = None
        yield int(entry.name), cmdline, cwd


def terminate(pid: int, timeout: float, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM), then SIGKILL if the process is still there after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while process_start_ticks(pid) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.1)
