"""``python -m ticketing_chaos [--seed N] [--seconds S] [--people P] [--data-dir DIR]``.

Starts the platform as ``make up`` does (on a fresh temporary data folder, with reservations
of ``--expiration`` seconds so unpaid orders expire during the run), or uses the one already
running on ``--data-dir``; runs the load and the faults together for ``--seconds``; waits for
the platform to settle; runs the invariant checker; stops what it started. Exits 0 only if the
platform settled, no invariant is violated, no request got a 500 and the load placed orders.
The seed fixes every choice (who does what,
which process is killed when); the timing of a real platform still varies between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ticketing_chaos.check import run_check
from ticketing_chaos.faults import FaultLog, inject_faults
from ticketing_chaos.load import LoadStats, run_load
from ticketing_chaos.platform import Launcher, PlatformError, endpoints
from ticketing_chaos.settle import settle
from ticketing_local.datafolder import DataFolder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ticketing_chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the chaos lasts")
    parser.add_argument("--people", type=int, default=8, help="shoppers at once")
    parser.add_argument(
        "--pause",
        type=float,
        nargs=2,
        default=(3.0, 8.0),
        metavar=("MIN", "MAX"),
        help="seconds between a process coming back and the next kill",
    )
    parser.add_argument(
        "--expiration", type=int, default=15, help="ORDER_EXPIRATION_SECONDS of a started platform"
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=180.0, help="how long to wait for it to settle"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="use the platform running on this data folder (default: start one on a fresh one)",
    )
    return parser.parse_args(argv)


async def chaos(data: DataFolder, args: argparse.Namespace, seed: int) -> int:
    rng = random.Random(seed)
    stats, faults, stop = LoadStats(), FaultLog(), asyncio.Event()
    started = time.monotonic()
    fault_task = asyncio.create_task(inject_faults(data, rng, stop, tuple(args.pause), faults))
    try:
        await run_load(endpoints(data).url, seed, args.people, args.seconds, stats)
    finally:
        stop.set()
        await fault_task
    print(f"chaos: load and faults over after {time.monotonic() - started:.0f}s", flush=True)
    _print_counts("outcomes", stats.outcomes)
    _print_counts("answers", stats.answers)
    _print_counts("interrupted requests (expected during kills)", stats.interrupted)
    _print_counts("kills", faults.kills)

    pending = await settle(data, args.settle_timeout)
    if pending:
        print(f"chaos: did not settle in {args.settle_timeout:g}s:", *pending, sep="\n  ")
    report = await run_check(data)
    print(report.render(), flush=True)
    problems = [f"{a}: {n} times" for a, n in stats.server_errors().items()]
    if not stats.outcomes["order placed"]:
        problems.append("the load placed no order: nothing was tested")
    problems += [f"{target} was not back in time" for target in faults.not_back]
    if problems:
        print("chaos: the run itself went wrong:", *problems, sep="\n  ")
    failed = bool(pending or report.violations or problems)
    print(f"chaos: {'FAILED' if failed else 'passed'} (seed {seed})", flush=True)
    return 1 if failed else 0


def _print_counts(what: str, counts: dict[str, int]) -> None:
    print(f"{what}:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    print(f"chaos: seed {seed} (repeat with --seed {seed})", flush=True)
    if args.data_dir is not None:
        return asyncio.run(chaos(DataFolder(args.data_dir), args, seed))
    base = Path(tempfile.mkdtemp(prefix="ticketing-chaos-"))
    launcher = Launcher(base / "data", base / "launcher.log")
    try:
        print(f"chaos: starting the platform (its output: {launcher.log_path})", flush=True)
        launcher.start({"ORDER_EXPIRATION_SECONDS": str(args.expiration)})
        return asyncio.run(chaos(launcher.data, args, seed))
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        launcher.stop()
        launcher.reset()
        shutil.rmtree(launcher.data.path, ignore_errors=True)
        print(f"chaos: the platform's output is in {launcher.log_path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
