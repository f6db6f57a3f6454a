"""The chaos run, small: the platform as ``make up`` runs it, under load while its processes
are killed, must settle with every invariant holding; and the invariant checker itself must
name a violation seeded in the databases.

The run is ``python -m ticketing_chaos`` in a subprocess, on a platform this module starts
(with reservations of a few seconds, so unpaid orders expire during the run).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from ticketing_chaos.platform import Endpoints, Launcher, endpoints
from ticketing_chaos.settle import settle

pytestmark = pytest.mark.timeout(600)

SEED = 20261126
CHAOS_SECONDS = 40


def run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    base = tmp_path_factory.mktemp("chaos")
    launcher = Launcher(base / "data", base / "launcher.log")
    launcher.start({"ORDER_EXPIRATION_SECONDS": "15"})
    try:
        yield launcher
    finally:
        launcher.stop()
        launcher.reset()


@pytest.fixture(scope="module")
def chaos_run(platform: Launcher) -> subprocess.CompletedProcess[str]:
    return run_module(
        "ticketing_chaos",
        *("--data-dir", str(platform.data.path), "--seed", str(SEED)),
        *("--seconds", str(CHAOS_SECONDS), "--people", "6"),
        timeout=480,
    )


def test_a_small_chaos_run_keeps_every_invariant(
    chaos_run: subprocess.CompletedProcess[str],
) -> None:
    out = chaos_run.stdout
    print(out)  # the run's counts, for `pytest -s` and the report of a failure
    assert f"chaos: seed {SEED}" in out
    for counted in ("events in the stream:", "orders by status:", "payments by status:"):
        assert counted in out, out
    assert "chaos: killed" in out, out  # the faults did happen
    assert "order placed" in out, out  # and so did the load
    assert "did not settle" not in out, out
    assert "was not back in time" not in out, out
    violations = [line.strip() for line in out.splitlines() if line.startswith("  [")]
    assert "no violations" in out and violations == [], out


def test_a_small_chaos_run_passes_as_a_whole(
    chaos_run: subprocess.CompletedProcess[str],
) -> None:
    """Besides the invariants: no answer is a 500, and every killed process came back."""
    assert chaos_run.returncode == 0, chaos_run.stdout + chaos_run.stderr
    assert "chaos: passed" in chaos_run.stdout


async def test_settling_waits_for_the_order_timers_about_to_fire(
    platform: Launcher, chaos_run: subprocess.CompletedProcess[str]
) -> None:
    """A paid or cancelled order's timer still fires at its expiresAt: one firing during the
    check could be read in the stream before orders has handled it. One due in moments is
    waited for; one due in an hour is not (it fires long after the check)."""
    assert await settle(platform.data, timeout=0) == []
    orders = await asyncpg.connect(endpoints(platform.data).database_dsn("orders"))
    try:
        order_id, expires_at = await orders.fetchrow(
            "UPDATE orders SET expires_at = now() + interval '10 seconds'"
            " FROM (SELECT id, expires_at FROM orders LIMIT 1) AS before"
            " WHERE orders.id = before.id RETURNING orders.id, before.expires_at"
        )
        try:
            soon = await settle(platform.data, timeout=0)
            await orders.execute(
                "UPDATE orders SET expires_at = now() + interval '1 hour' WHERE id = $1", order_id
            )
            later = await settle(platform.data, timeout=0)
        finally:
            await orders.execute(
                "UPDATE orders SET expires_at = $1 WHERE id = $2", expires_at, order_id
            )
    finally:
        await orders.close()
    assert soon == ["orders: 1 expiry timers about to fire"]
    assert later == []


async def seed_violations(where: Endpoints) -> dict[str, str]:
    """Break one invariant per kind in the databases; what the checker must say about each."""
    bogus_order, outbox_id, parked_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    tickets = await asyncpg.connect(where.database_dsn("tickets"))
    try:
        ticket_id = await tickets.fetchval("SELECT id FROM tickets LIMIT 1")
        # The ticket held by an order orders has never heard of.
        await tickets.execute(
            "UPDATE tickets SET order_id = $1 WHERE id = $2", bogus_order, ticket_id
        )
        # An event the relay gave up on (failed_at set: the relay leaves it alone).
        await tickets.execute(
            "INSERT INTO outbox (id, nats_subject, envelope, last_error, failed_at)"
            " VALUES ($1, 'ticket.created', '{}', 'refused', now())",
            outbox_id,
        )
    finally:
        await tickets.close()
    orders = await asyncpg.connect(where.database_dsn("orders"))
    try:
        # A replica left behind its source.
        replica = await orders.fetchrow(
            "UPDATE tickets SET version = version + 7"
            " WHERE id = (SELECT id FROM tickets LIMIT 1) RETURNING id, version"
        )
        # An order charging other than what its ticket was reserved at.
        repriced = await orders.fetchval(
            "UPDATE orders SET ticket_price = ticket_price + 1"
            " WHERE id = (SELECT id FROM orders WHERE status = 'complete' LIMIT 1) RETURNING id"
        )
    finally:
        await orders.close()
    payments = await asyncpg.connect(where.database_dsn("payments"))
    try:
        await payments.execute(
            "INSERT INTO parked_events (event_id, subject, envelope, error, deliveries)"
            " VALUES ($1, 'order.created', '{}', 'boom', 5)",
            parked_id,
        )
    finally:
        await payments.close()
    return {
        "one live order": f"ticket {ticket_id} is held by order {bogus_order} in tickets",
        "outbox drained": f"tickets: outbox {outbox_id} (ticket.created) given up",
        "nothing parked": f"payments: order.created {parked_id} after 5 deliveries: boom",
        "replica current": f"orders' copy of ticket {replica['id']} is v{replica['version']}",
        "ticket's terms": f"order {repriced} (complete) is at",
    }


async def test_the_checker_names_each_violation_seeded_in_the_databases(
    platform: Launcher, chaos_run: subprocess.CompletedProcess[str]
) -> None:
    expected = await seed_violations(endpoints(platform.data))
    check = run_module("ticketing_chaos.check", "--data-dir", str(platform.data.path), timeout=120)
    assert check.returncode == 1, check.stdout + check.stderr
    for rule, detail in expected.items():
        assert any(
            line.strip().startswith(f"[{rule}]") and detail in line
            for line in check.stdout.splitlines()
        ), f"{rule}: {detail}\n{check.stdout}"


def test_the_checker_says_when_no_platform_runs(tmp_path: Path) -> None:
    check = run_module("ticketing_chaos.check", "--data-dir", str(tmp_path), timeout=60)
    assert check.returncode == 2
    assert f"the platform is not running on {tmp_path}" in check.stderr
