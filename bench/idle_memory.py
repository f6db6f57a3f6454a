"""Benchmark: each service's memory at idle, the platform running as ``make up`` runs it.

Starts the platform on a temporary folder, waits until every consumer has caught up and a few
seconds more, then prints the RSS (and USS: the memory the process alone holds) of each
service beside the target (80 MiB each, issue 10).

    .venv/bin/python bench/idle_memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil

import psutil
from event_pipeline import temporary_folder
from platform_under_test import SERVICES, EventWatcher, Platform

MIB = 1024 * 1024
TARGET_MIB = 80.0


async def measure(settle_seconds: float) -> dict[str, tuple[int, int]]:
    work = temporary_folder()
    platform = Platform(work / "data", work / "platform.log", secrets.token_hex(32))
    await asyncio.to_thread(platform.start)
    try:
        watcher = await EventWatcher.connect(platform)
        await watcher.until_quiet(60.0)
        await watcher.close()
        await asyncio.sleep(settle_seconds)
        pids = platform.processes()
        sizes = {}
        for name in SERVICES:
            info = psutil.Process(pids[name]).memory_full_info()
            sizes[name] = (info.rss, info.uss)
        return sizes
    finally:
        await asyncio.to_thread(platform.stop)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before reading")
    args = parser.parse_args()
    sizes = asyncio.run(measure(args.settle))
    print(f"{'service':<12}{'RSS MiB':>10}{'USS MiB':>10}   target ≤ {TARGET_MIB:.0f} MiB RSS")
    for name, (rss, uss) in sizes.items():
        met = "yes" if rss / MIB <= TARGET_MIB else "no"
        print(f"{name:<12}{rss / MIB:>10.1f}{uss / MIB:>10.1f}   {met}")


if __name__ == "__main__":
    main()
