"""Where the CPU goes: every Python process of the platform sampled by py-spy under purchases.

Starts the platform as ``make up`` does, makes the tickets, then offers purchases at a steady
rate while py-spy records each service and the edge (CPU samples only: idle threads are left
out). Writes, per process, the raw collapsed stacks and a summary: the functions holding the
most samples themselves (self) and under them (total); and beside the CPU per purchase of every
process, the transactions each service's database committed per purchase (how far events share
them). ``docs/bench/profile.md`` is written from those summaries. Sampling as root needs no
setting; otherwise see py-spy's docs on ptrace.

    .venv/bin/python bench/profiling.py --rate 80 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import event_pipeline
from platform_under_test import SERVICES, CpuSpan
from progress import Progress
from run import LONG_EXPIRY, Bench, Plan

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench" / "profile"
TOP = 25
LINE_NUMBER = re.compile(r":\d+\)$")
OUR_CODE = re.compile(
    r"\((ticketing_common|ticketing_local|auth|tickets|orders|expiration|payments)/(?!__main__)"
)
SAMPLES_PER_SECOND = 100
# A backend reports its transaction counts at most once a second, and an idle one within
# PostgreSQL's idle interval (10 s): the counts are read after that.
STATS_REPORTED_SECONDS = 11.0
# A sample of a thread running no Python code (py-spy's empty stack): compiled code alone.
NO_PYTHON_FRAME = "(no Python frame)"
# "function (package/module.py)" -> "package" (or "module.py" for a module of its own).
PACKAGE = re.compile(r"^.*\(<?([^/:>)]+).*$")


def summarise(collapsed: str, top: int = TOP) -> str:
    """The functions with the most samples: their own (self), and for the platform's own code,
    everything under them (total)."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()  # self samples by the package (or module) they are in
    under: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        # "function (path/file.py:line)": one entry per function, whatever line it was on.
        frames = [LINE_NUMBER.sub(")", frame) for frame in stack.split(";") if frame]
        frames = frames or [NO_PYTHON_FRAME]
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        packages[PACKAGE.sub(r"\1", frames[-1])] += samples
        for frame in set(frames):
            if OUR_CODE.search(frame):
                under[frame] += samples
    lines = [f"{total} samples"]
    tables = (
        ("self, by package", packages),
        ("self", own),
        ("total (self and callees), our code", under),
    )
    for title, counter in tables:
        lines += ["", f"top {top} by {title}:"]
        lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines) + "\n"


async def record(pid: int, seconds: float, output: Path, native: bool) -> bool:
    # Native frames (uvloop, asyncpg's protocol, both compiled) need the process paused for
    # each sample; Python frames alone do not.
    how = ["--native"] if native else ["--nonblocking"]
    process = await asyncio.create_subprocess_exec(
        shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(round(seconds)),
        "--rate",
        str(SAMPLES_PER_SECOND),
        "--format",
        "raw",
        *how,
        "--output",
        str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, error = await process.communicate()
    if process.returncode != 0:
        print(f"py-spy on pid {pid}: {error.decode(errors='replace').strip()}", file=sys.stderr)
    return process.returncode == 0


async def commits(postgres_port: int) -> dict[str, int]:
    """Transactions committed so far in each service's database."""
    connection = await asyncpg.connect(host="127.0.0.1", port=postgres_port, user="postgres")
    try:
        rows = await connection.fetch(
            "SELECT datname, xact_commit FROM pg_stat_database WHERE datname = ANY($1::text[])",
            list(SERVICES),
        )
    finally:
        await connection.close()
    return {row["datname"]: row["xact_commit"] for row in rows}


async def profile(rate: float, seconds: float, out: Path, native: bool) -> None:
    work = event_pipeline.temporary_folder()
    bench = Bench(Plan(), work, Progress(4 * seconds))
    bench.progress.start("starting the platform", 30)
    await bench.start_platform(LONG_EXPIRY)
    try:
        tickets = await bench.tickets(round(rate * seconds))
        bench.progress.start(f"profiling under {rate:g} purchases/s", seconds)
        pids = bench.platform.processes()
        names = [name for name in (*SERVICES, "edge") if name in pids]
        postgres_port = bench.platform.status["processes"]["postgres"]["port"]
        await asyncio.sleep(STATS_REPORTED_SECONDS)  # the tickets' transactions counted first
        committed_before = await commits(postgres_port)
        span = CpuSpan(bench.meter.cpu())
        load = asyncio.create_task(bench.steady(tickets, rate))
        recorded = await asyncio.gather(
            *(record(pids[n], seconds, out / f"{n}.collapsed.txt", native) for n in names)
        )
        answers, propagation, _ = await load
        span.after = bench.meter.cpu()
        await bench.settle()
        await asyncio.sleep(STATS_REPORTED_SECONDS)
        committed = await commits(postgres_port)
        purchases = max(len(propagation), 1)
        cpu = "\n".join(
            f"{name:<12}{1000 * s / purchases:7.2f} ms"
            for name, s in sorted(span.by_process.items(), key=lambda item: -item[1])
        )
        # Unbatched, a purchase commits 8 times: the order, 4 events handled (tickets,
        # expiration, payments, then orders), and the 3 relays' claims of what those sent.
        per_database = "\n".join(
            f"{name:<12}{(committed[name] - committed_before.get(name, 0)) / purchases:7.2f}"
            for name in SERVICES
            if name in committed
        )
        (out / "cpu-per-purchase.txt").write_text(
            f"{len(answers)} orders at {rate:g}/s, {len(propagation)} propagated "
            f"(py-spy sampling adds to the services' figures)\n{cpu}\n\n"
            "database transactions committed per purchase (unbatched: 8 in all)\n"
            f"{per_database}\n"
        )
        for name, ok in zip(names, recorded, strict=True):
            if ok:
                collapsed = (out / f"{name}.collapsed.txt").read_text()
                (out / f"{name}.top.txt").write_text(summarise(collapsed))
    finally:
        await bench.stop_platform()
        await asyncio.to_thread(bench.platform.wipe)
        shutil.rmtree(work, ignore_errors=True)
    bench.progress.finish()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=80.0, help="purchases per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--native", action="store_true", help="compiled frames too (pauses)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(profile(args.rate, args.seconds, args.out, args.native))


if __name__ == "__main__":
    main()
