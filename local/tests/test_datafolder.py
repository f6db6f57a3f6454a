"""The data folder: one launcher at a time, a kept JWT key, a complete reset, no leftovers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ticketing_local.datafolder import AlreadyRunningError, DataFolder, process_start_ticks


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


def test_reset_wipes_everything_including_relocated_postgres_data(tmp_path: Path) -> None:
    data = DataFolder(tmp_path / "data")
    data.lock()
    data.jwt_key()
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
