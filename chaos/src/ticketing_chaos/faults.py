"""The fault driver: kills the platform's processes, one at a time, and lets the launcher
bring each back (it restarts a crashed service, NATS and PostgreSQL on its own).

Targets come round in a shuffled cycle (every service, NATS, PostgreSQL), so even a short run
hits each of them; the seed fixes the order and the pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from ticketing_chaos.platform import live_pid
from ticketing_local.datafolder import DataFolder
from ticketing_local.launcher import BACKEND_SERVICES

# How each process dies. A service and NATS get SIGKILL. PostgreSQL gets an immediate
# shutdown (SIGQUIT): it stops at once with no checkpoint and recovers from its WAL on the
# next start, as after a crash, but takes its backends with it; after a SIGKILL of the
# postmaster, orphaned backends would keep its shared memory and block the restart.
SIGNALS = {"nats": signal.SIGKILL, "postgres": signal.SIGQUIT}
TARGETS = (*BACKEND_SERVICES, "nats", "postgres")
BACK_TIMEOUT_SECONDS = 90.0


@dataclass
class FaultLog:
    kills: Counter[str] = field(default_factory=Counter)
    # Targets the launcher did not bring back within BACK_TIMEOUT_SECONDS.
    not_back: list[str] = field(default_factory=list)


async def inject_faults(
    data: DataFolder,
    rng: random.Random,
    stop: asyncio.Event,
    pause: tuple[float, float],
    log: FaultLog,
) -> None:
    """Until ``stop`` is set: kill a target, wait until it is back, pause, repeat."""
    cycle: list[str] = []
    while not await _stopped_within(stop, rng.uniform(*pause)):
        if not cycle:
            cycle = rng.sample(TARGETS, len(TARGETS))
        target = cycle.pop()
        pid = live_pid(data, target)
        if pid is None:  # still coming back from something else
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, SIGNALS.get(target, signal.SIGKILL))
        log.kills[target] += 1
        print(f"chaos: killed {target} (pid {pid})", flush=True)
        if not await _back(data, target, pid):
            log.not_back.append(target)
            print(f"chaos: {target} was not back after {BACK_TIMEOUT_SECONDS:g}s", flush=True)


async def _back(data: DataFolder, target: str, old_pid: int) -> bool:
    """Poll the status file until ``target`` runs again under a new pid."""
    deadline = time.monotonic() + BACK_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        pid = live_pid(data, target)
        if pid is not None and pid != old_pid:
            return True
        await asyncio.sleep(0.2)
    return False


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
