"""`pip install ./common` works on its own, in a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_common_installs_with_pip_into_a_fresh_venv(tmp_path: Path) -> None:
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    # --no-compile: byte-compiling every dependency is a good part of the install's time, and
    # the import below compiles what it needs.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", str(ROOT / "common")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    probe = (
        "import ticketing_common.app, ticketing_common.messaging, ticketing_common.events;"
        "from ticketing_common.events import Subject; print(len(Subject))"
    )
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"
    assert sys.version_info >= (3, 11)
