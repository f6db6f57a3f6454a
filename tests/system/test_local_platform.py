"""The whole platform across processes, driven over HTTP on one origin as a user would.

The services are eventually consistent (orders learns of a ticket from an event), so a step that
depends on another service having caught up is polled with a timeout; see conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from .local_platform import (
    EVENTUAL,
    LocalPlatform,
    User,
    available_ids,
    live_processes,
    processes_mentioning,
    wait_until,
)

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def platform_env() -> dict[str, str]:
    """A platform of its own: these tests kill, stop and restart its processes."""
    return {"ORDER_EXPIRATION_SECONDS": "60"}


@pytest.fixture(autouse=True)
def running_as_the_module_started_it(platform: LocalPlatform, platform_env: dict[str, str]) -> None:
    """Whichever test ran before (one restarts the platform with other settings, one kills it
    outright), each finds it running as the module started it."""
    if platform.process is not None and platform.started_with == platform_env:
        return
    if platform.process is not None:
        platform.stop()
    platform.start(**platform_env)


def test_sign_up_list_buy_pay_complete(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    seller, buyer = new_user(), new_user()
    me = buyer.http.get("/api/users/currentuser")
    assert me.json()["currentUser"]["email"] == buyer.email

    ticket = seller.list_ticket("Concert", "20.50")
    assert Decimal(str(ticket["price"])) == Decimal("20.50")
    assert ticket["id"] in available_ids(platform)

    order = buyer.order(ticket["id"])
    assert order["status"] == "created"
    assert order["ticket"]["id"] == ticket["id"]
    wait_until(
        lambda: ticket["id"] not in available_ids(platform),
        EVENTUAL,
        "the ticket to leave the list",
    )

    payment = buyer.pay(order["id"])
    assert payment.status_code == 201, payment.text
    assert payment.json()["orderId"] == order["id"]
    wait_until(
        lambda: buyer.order_status(order["id"]) == "complete", EVENTUAL, "the order to complete"
    )
    assert ticket["id"] not in available_ids(platform)

    # Paying again never charges twice.
    again = buyer.pay(order["id"])
    assert again.status_code == 400 or again.json()["id"] == payment.json()["id"], again.text


def test_postgres_keeps_its_data_where_its_unprivileged_user_can_reach_it(
    platform: LocalPlatform,
) -> None:
    status = platform.status()
    postgres_dir = Path(status["postgresDataDir"])
    folders = [platform.data.path, *platform.data.path.parents]
    closed = any(not f.stat().st_mode & stat.S_IXOTH for f in folders)
    if os.geteuid() == 0 and closed:
        # The test's data folder is private (0700): PostgreSQL's user cannot enter it.
        assert not postgres_dir.is_relative_to(platform.data.path)
        # Said when it was moved: by this start, or the first one on this data.
        assert f"Its data lives in {postgres_dir}" in platform.output_of_every_start()
    else:
        assert postgres_dir == platform.data.path / "postgres"
    assert (postgres_dir / "PG_VERSION").exists()


def test_a_second_launcher_on_the_same_data_says_so(platform: LocalPlatform) -> None:
    second = platform.command(PORT=str(platform.port + 1))
    assert second.returncode == 1
    assert "already running" in second.stdout
    assert str(platform.status()["pid"]) in second.stdout
    status = platform.command("status")
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["pid"] == platform.status()["pid"]
    # ... and the first one is unharmed.
    with platform.client() as http:
        assert http.get("/api/users/currentuser").status_code == 200


def test_a_port_in_use_is_reported_before_anything_starts(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    # The running platform's port.
    taken = platform.command(data_dir=tmp_path / "data", PORT=str(platform.port))
    assert taken.returncode == 1
    assert f"port {platform.port} is in use; choose another with PORT=" in taken.stdout
    assert not (tmp_path / "data" / "postgres").exists()


def test_a_service_killed_mid_flow_is_restarted_and_nothing_is_lost(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    seller, buyer = new_user(), new_user()
    ticket = seller.list_ticket("Play", "35")
    order = buyer.order(ticket["id"])

    # orders crashes right after taking the order: its order.created may still sit in its
    # outbox, and payment.created will arrive while it is down.
    before = platform.status()["processes"]["orders"]
    os.kill(before["pid"], signal.SIGKILL)

    payment = buyer.pay(order["id"])
    assert payment.status_code == 201, payment.text
    wait_until(
        lambda: ticket["id"] not in available_ids(platform),
        EVENTUAL,
        "the ticket to leave the list",
    )
    wait_until(
        lambda: buyer.order_status(order["id"]) == "complete",
        EVENTUAL * 2,
        f"the order to complete after orders restarts\n{platform.output()[-4000:]}",
    )

    def restarted() -> dict[str, Any] | None:
        info: dict[str, Any] = platform.status()["processes"]["orders"]
        return info if info["pid"] != before["pid"] else None

    # With REPLICAS=2, orders-2 may finish the flow before orders is back.
    after = wait_until(restarted, EVENTUAL, "orders to be restarted")
    assert after["restarts"] == before["restarts"] + 1
    assert f"orders (pid {before['pid']}) killed by SIGKILL; restarting" in platform.output()
    orders = buyer.http.get("/api/orders").json()
    assert [o["id"] for o in orders].count(order["id"]) == 1


def test_restart_keeps_data_then_an_unpaid_order_expires(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    user = new_user()
    ticket = user.list_ticket("Festival", "12.25")
    status = platform.status()
    jwt_key = (platform.data.path / "jwt_key").read_text()

    assert platform.stop(signal.SIGINT) == 0  # Ctrl-C
    assert live_processes(status) == {}, "processes outlived the launcher"
    assert processes_mentioning(platform.data.path) == []
    assert processes_mentioning(platform.data.postgres_dir) == []
    assert platform.data.read_status() is None

    # Started again on the same data, with short reservations.
    platform.start(ORDER_EXPIRATION_SECONDS="3")
    assert (platform.data.path / "jwt_key").read_text() == jwt_key
    # The old session cookie is still valid: the generated key was kept.
    me = user.http.get("/api/users/currentuser").json()["currentUser"]
    assert me is not None and me["email"] == user.email
    assert ticket["id"] in available_ids(platform)

    buyer = new_user()
    order = buyer.order(ticket["id"])
    wait_until(
        lambda: ticket["id"] not in available_ids(platform), EVENTUAL, "the ticket to be reserved"
    )
    wait_until(
        lambda: buyer.order_status(order["id"]) == "cancelled", EVENTUAL, "the order to expire"
    )
    wait_until(lambda: ticket["id"] in available_ids(platform), EVENTUAL, "the ticket to return")
    late = buyer.pay(order["id"])
    assert late.status_code == 400, late.text


def test_a_launcher_killed_outright_leaves_nothing_once_reset(platform: LocalPlatform) -> None:
    status = platform.status()
    assert platform.stop(signal.SIGKILL) == -signal.SIGKILL

    # The services die with their parent; PostgreSQL and NATS are left for the next start.
    servers = {"postgres", "nats"}
    wait_until(
        lambda: live_processes(status).keys() <= servers,
        30,
        "the services to die with the launcher",
    )

    # `reset` (like the next start) stops what the killed launcher left, then wipes the data,
    # wherever PostgreSQL's went.
    postgres_dir = platform.data.postgres_dir
    reset = platform.command("reset")
    assert reset.returncode == 0, reset.stdout
    for name in sorted(servers):
        assert f"stopping {name} (pid {status['processes'][name]['pid']}), left by" in reset.stdout
    assert live_processes(status) == {}
    assert processes_mentioning(platform.data.path) == []
    assert processes_mentioning(postgres_dir) == []
    assert not postgres_dir.exists()
    assert not (platform.data.path / "jwt_key").exists()
