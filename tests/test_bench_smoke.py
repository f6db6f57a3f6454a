"""``make bench`` in quick mode: the instrument works from end to end.

It starts the platform as ``make up`` does, runs every phase with small counts, and must produce
the table (every row well-formed), the raw figures and the plots. Nothing here judges speed:
the figures of a quick run on a busy machine mean nothing, and the bench only measures.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ticketing_local.as_child import SCRUBBED_ENV

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_bench(script: str, *args: str, timeout: float) -> str:
    """A bench script's output, once it has succeeded."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    return run.stdout


@pytest.mark.timeout(900)
def test_quick_bench_writes_a_well_formed_table_and_the_plots(tmp_path: Path) -> None:
    stdout = run_bench("run.py", "--quick", "--out", str(tmp_path), timeout=840)

    table = (tmp_path / "results.md").read_text()
    assert table in stdout  # the table printed is the one written
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = ["what", "ours", "reference", "ours / reference", "target", "met"]
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == header
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        assert cells[5] in {"yes", "**no**", "-"}, line
    assert "Quick run" in table and "load average" in table  # the conditions it ran in

    document = json.loads((tmp_path / "results.json").read_text())
    rows = {row["what"]: row for row in document["rows"]}
    assert len(rows) == len(lines) - 2
    for what in (
        "`POST /api/orders` at saturation, orders process directly",
        "`POST /api/orders` at saturation, through the edge",
        "`POST /api/orders` at saturation, the same flow wired bare: one insert, one publish",
        "CPU per purchase fully propagated, every process",
        "CPU per purchase, the same flow wired bare (no outbox, inbox, ORM, middleware or logs)",
        "relay: outbox to JetStream, one process",
        "consumer: handler + inbox row, one process",
        "RSS of the largest service, idle",
    ):
        assert rows[what]["ours"] > 0, rows[what]
        assert rows[what]["reference"] > 0, rows[what]
    flash = next(row for what, row in rows.items() if what.startswith("flash sale"))
    assert not math.isnan(flash["ours"]), "the flash sale's tickets never all showed their order"

    raw = document["raw"]
    assert raw["failures"] == []  # every purchase propagated, every phase settled
    processes = raw["cpuMsPerPurchase"]
    assert {"postgres", "nats", "edge", "orders", "tickets"} <= processes.keys()
    assert processes["orders"] > 0 and processes["postgres"] > 0
    assert raw["sweep"] and raw["sweep"][0]["offered"] > 0
    expiries = raw["cpuMsPerExpiredOrder"]  # the cancellations' cost, everywhere they go
    assert {"orders", "tickets", "payments", "postgres"} <= expiries.keys()
    assert sum(expiries.values()) > 0  # (one process alone may spend less than a clock tick)

    # The burst's purchases through the same flow wired bare: every part spent CPU on them.
    bare = raw["bare"]["cpuMsPerPurchase"]
    assert bare.keys() == {"orders", "tickets", "payments", "expiration", "postgres", "nats"}
    assert bare["orders"] > 0 and bare["postgres"] > 0 and bare["nats"] > 0
    assert raw["bare"]["propagationP99Ms"] > 0 and raw["bare"]["ordersAtSaturationPerSecond"] > 0

    for plot in ("latency.png", "throughput.png", "cpu.png"):
        assert (tmp_path / plot).read_bytes().startswith(PNG_SIGNATURE), plot


@pytest.mark.timeout(300)
def test_the_pipeline_bench_feeds_events_at_a_steady_rate_from_another_process() -> None:
    stdout = run_bench("event_pipeline.py", "--arriving-at", "100", "--events", "30", timeout=240)
    assert "30 events arriving at 100/s" in stdout
    figures = {
        line.split(":")[0].strip(): float(line.split(":")[1].split()[0])
        for line in stdout.splitlines()
        if " ms" in line
    }
    # Each side got every event (or it would not have finished) and spent CPU on them; the
    # relay sent every one, both ways (or the bench would have failed). Its figures are
    # differences of two runs, which a handful of events may leave at zero or below.
    consumers = {"nats-py alone (fetch, ack)", "consumer runner, no-op"}
    relays = {"outbox relay, handed over", "outbox relay, woken"}
    assert figures.keys() == consumers | relays, stdout
    assert all(figures[name] > 0 for name in consumers), stdout
