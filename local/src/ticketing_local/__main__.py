"""``python -m ticketing_local [up|reset|status] [--data-dir DIR] [--reset]``.

- ``up`` (the default): start the platform on http://localhost:$PORT (8080) until Ctrl-C.
  ``--reset`` wipes the data first.
- ``reset``: wipe the data (refused while the platform is running).
- ``status``: what is running, from the status file.

Environment: ``PORT`` (the edge's port), ``REPLICAS`` (processes of every service, 1),
``JWT_KEY`` (else one is generated and kept in the data folder), ``TICKETING_DATA_DIR`` (else
``.data/`` in the repository); everything else, such as ``ORDER_EXPIRATION_SECONDS`` or
``STRIPE_KEY``, passes through to the services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from ticketing_local.datafolder import AlreadyRunningError, DataFolder
from ticketing_local.launcher import Launcher
from ticketing_local.processes import Output
from ticketing_local.routing import REPO_ROOT

DEFAULT_PORT = 8080
# Each replica is a Python process of every service: a few are plenty on one machine.
MAX_REPLICAS = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ticketing_local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=["up", "reset", "status"], default="up")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TICKETING_DATA_DIR", REPO_ROOT / ".data")),
        help="where PostgreSQL, NATS and the generated JWT key live (default: .data/)",
    )
    parser.add_argument("--reset", action="store_true", help="wipe the data before starting")
    args = parser.parse_args(argv)
    output = Output()
    data = DataFolder(args.data_dir)

    if args.command == "status":
        status = data.read_status()
        if status and data.is_locked():
            print(json.dumps(status, indent=2))
        else:
            print(f"not running (data in {data.path})")
        return 0

    try:
        port = int(os.environ.get("PORT", DEFAULT_PORT))
    except ValueError:
        output.line("launcher", f"error: PORT must be a number, not {os.environ['PORT']!r}")
        return 2
    replicas = os.environ.get("REPLICAS", "1")
    if not replicas.isdigit() or not 1 <= int(replicas) <= MAX_REPLICAS:
        output.line("launcher", f"error: REPLICAS must be 1 to {MAX_REPLICAS}, not {replicas!r}")
        return 2
    try:
        data.lock()
    except AlreadyRunningError as exc:
        output.line("launcher", f"error: {exc}")
        return 1
    try:
        # A launcher killed outright (SIGKILL) may have left servers running on this data.
        data.stop_leftovers(lambda message: output.line("launcher", message))
        if args.command == "reset" or args.reset:
            for path in data.wipe():
                output.line("launcher", f"deleted {path}")
            output.line("launcher", f"data reset ({data.path})")
            if args.command == "reset":
                return 0
        return asyncio.run(Launcher(data, port, output, int(replicas)).run())
    finally:
        data.unlock()


if __name__ == "__main__":
    sys.exit(main())
