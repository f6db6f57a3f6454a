"""Running PostgreSQL as root: only binaries nobody else could have changed are used."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from ticketing_common.embedded import _only_root_can_change

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root copies the binaries")


def test_root_owned_locked_folder_is_trusted(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "bin").mkdir(parents=True)
    (cache / "bin" / "postgres").write_text("#!/bin/sh\n")
    for entry in (cache, cache / "bin", cache / "bin" / "postgres"):
        entry.chmod(0o755)
    assert _only_root_can_change(cache)

    (cache / "bin").chmod(0o777)  # anyone could swap the binary
    assert not _only_root_can_change(cache)
    (cache / "bin").chmod(0o755)

    os.chown(cache / "bin" / "postgres", pwd.getpwnam("nobody").pw_uid, -1)
    assert not _only_root_can_change(cache)


def test_a_planted_symlink_is_not_trusted(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "cache"
    link.symlink_to(target)
    assert not _only_root_can_change(link)
