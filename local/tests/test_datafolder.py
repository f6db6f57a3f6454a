"""The data folder: one launcher at a time, a kept JWT key, a complete reset, no leftovers."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ticketing_common.messaging.permissions import USERS
from ticketing_local.datafolder import (
    AlreadyRunningError,
    DataFolder,
    folder_problem,
    process_start_ticks,
)


def test_a_second_launcher_is_told_the_first_is_running(tmp_path: Path) -> None:
    first = DataFolder(tmp_path / "data")
    first.lock()
    first.write_status({"pid": 4242, "url": "http://localhost:8080", "processes": {}})
    assert DataFolder(tmp_path / "data").is_locked()
    try:
        with pytest.raises(AlreadyRunningError, match=r"already running .*pid 4242.*8080"):
            DataFolder(tmp_path / "data").lock()
    finally:
        first.unlock()
    assert not first.is_locked()
    DataFolder(tmp_path / "data").lock()  # free again once the first lets go


def test_the_generated_jwt_key_is_kept_and_private(tmp_path: Path) -> None:
    data = DataFolder(tmp_path)
    key = data.jwt_key()
    assert len(key) == 64
    assert DataFolder(tmp_path).jwt_key() == key
    assert stat.S_IMODE((tmp_path / "jwt_key").stat().st_mode) == 0o600


def test_nats_passwords_are_generated_once_kept_and_private(tmp_path: Path) -> None:
    data = DataFolder(tmp_path)
    passwords = data.nats_passwords()
    assert sorted(passwords) == sorted(USERS)
    assert len(set(passwords.values())) == len(USERS)  # one of its own for each user
    assert DataFolder(tmp_path).nats_passwords() == passwords
    monitor = DataFolder(tmp_path).monitor_credentials()
    assert (monitor.user, monitor.password) == ("monitor", passwords["monitor"])
    config = data.nats_config()
    assert passwords["orders"] in config.read_text()
    for path in (tmp_path / "nats_passwords.json", config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reset_wipes_everything_including_relocated_postgres_data(tmp_path: Path) -> None:
    data = DataFolder(tmp_path / "data")
    data.lock()
    data.jwt_key()
    data.nats_config()
    (data.nats_dir / "jetstream").mkdir(parents=True)
    relocated = data.relocate_postgres()
    relocated.mkdir()
    (relocated / "PG_VERSION").write_text("18\n")
    assert data.postgres_dir == relocated
    try:
        data.wipe()
        assert not relocated.parent.exists()
        assert [p.name for p in data.path.iterdir()] == ["launcher.lock"]
        assert data.postgres_dir == data.path / "postgres"
    finally:
        data.unlock()


def test_leftovers_of_a_killed_launcher_are_stopped_and_reused_pids_spared(
    tmp_path: Path,
) -> None:
    data = DataFolder(tmp_path)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        data.write_status(
            {
                "processes": {
                    "tickets": {"pid": orphan.pid, "startTicks": process_start_ticks(orphan.pid)},
                    # Our own pid with another start time: a reused pid, not a leftover.
                    "auth": {"pid": os.getpid(), "startTicks": -1},
                }
            }
        )
        messages: list[str] = []
        data.stop_leftovers(messages.append)
        assert orphan.wait(5) is not None
        assert messages == [
            f"stopping tickets (pid {orphan.pid}), left by a launcher that did not stop cleanly"
        ]
        assert data.read_status() is None
    finally:
        orphan.kill()
        orphan.wait()


@pytest.fixture
def shared_parent(tmp_path: Path) -> Iterator[tuple[DataFolder, Path]]:
    """A data folder and the /var/tmp name its relocated PostgreSQL data would use."""
    data = DataFolder(tmp_path / "data")
    data.path.mkdir()
    usual = data.shared_postgres_parent()
    assert not usual.exists() and not usual.is_symlink()
    yield data, usual
    for leftover in usual.parent.glob(f"{usual.name}*"):
        if leftover.is_symlink():
            leftover.unlink()
        else:
            shutil.rmtree(leftover)


def test_relocation_never_follows_a_symlink_planted_at_its_name(
    shared_parent: tuple[DataFolder, Path], tmp_path: Path
) -> None:
    data, usual = shared_parent
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    elsewhere.chmod(0o700)
    usual.symlink_to(elsewhere)

    messages: list[str] = []
    relocated = data.relocate_postgres(messages.append)

    assert relocated.parent != usual and relocated.parent.name.startswith(usual.name + "-")
    assert not relocated.parent.is_symlink()
    assert list(elsewhere.iterdir()) == []
    assert stat.S_IMODE(os.lstat(elsewhere).st_mode) == 0o700  # not chmod-ed through the link
    assert data.postgres_dir == relocated  # the pointer names the fresh folder
    assert messages == [
        f"warning: {usual} is a symbolic link, so not used; "
        f"PostgreSQL's data goes to {relocated.parent} instead"
    ]
    # A reset deletes our folder, never what the link points to.
    data.wipe()
    assert not relocated.parent.exists() and elsewhere.exists() and usual.is_symlink()


def test_a_planted_folder_is_refused_a_folder_of_ours_is_reused(
    shared_parent: tuple[DataFolder, Path],
) -> None:
    data, usual = shared_parent
    usual.mkdir(mode=0o700)
    usual.chmod(0o777)  # writable by anyone: someone else could put things inside
    assert folder_problem(usual) == f"{usual} is writable by other users"
    assert data.relocate_postgres().parent != usual

    usual.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(usual, 65534, 65534)  # nobody's
        assert folder_problem(usual) == f"{usual} belongs to another user (uid 65534)"
        os.chown(usual, 0, 0)
    assert folder_problem(usual) is None
    assert data.relocate_postgres() == usual / "postgres"


def test_a_relocated_folder_replaced_since_the_last_start_is_not_used(
    shared_parent: tuple[DataFolder, Path], tmp_path: Path
) -> None:
    data, usual = shared_parent
    first = data.relocate_postgres()
    assert data.checked_postgres_dir() == first == usual / "postgres"
    # /var/tmp cleaned, then another user plants a symlink at the name before the next start.
    shutil.rmtree(usual)
    usual.symlink_to(tmp_path)
    messages: list[str] = []
    again = data.checked_postgres_dir(messages.append)
    assert again.parent != usual and not again.parent.is_symlink()
    assert messages[0] == (
        f"warning: {usual} is a symbolic link; PostgreSQL's data there is not used"
    )


def postgres_folder_with_lock(tmp_path: Path, owner_pid: int) -> tuple[DataFolder, Path]:
    data = DataFolder(tmp_path / "data")
    data.postgres_dir.mkdir(parents=True)
    lock = data.postgres_dir / "postmaster.pid"
    lock.write_text(f"{owner_pid}\n{data.postgres_dir}\n")
    return data, lock


def test_a_lock_whose_owner_is_a_zombie_is_cleared(tmp_path: Path) -> None:
    # Killed, but not yet reaped by its parent: the pid still exists, the server does not.
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{owner.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        pass  # until it has exited (a zombie, as we never wait for it here)
    data, lock = postgres_folder_with_lock(tmp_path, owner.pid)
    try:
        data.clear_stale_postgres_lock(lambda _: None)
        assert not lock.exists()
    finally:
        owner.wait()


def test_a_lock_is_kept_while_a_process_of_its_server_lives(tmp_path: Path) -> None:
    data, lock = postgres_folder_with_lock(tmp_path, os.getpid())
    # A backend of the old server, still working in its data folder.
    backend = subprocess.Popen(["sleep", "60"], cwd=data.postgres_dir)
    clearing = threading.Thread(target=data.clear_stale_postgres_lock, args=(lambda _: None,))
    try:
        clearing.start()
        clearing.join(timeout=1)
        assert clearing.is_alive() and lock.exists()
    finally:
        backend.kill()
        backend.wait()
    clearing.join(timeout=30)
    assert not clearing.is_alive() and not lock.exists()
