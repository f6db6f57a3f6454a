"""Local mode with ``REPLICAS=2``: two processes of every service behind the edge.

Each replica is seen serving (by its lines in the launcher's output, which are prefixed with
the process's name); purchases made at once, whichever replicas take them, each propagate
exactly once (the replicas share each outbox, each durable consumer and each inbox); and a
killed replica is skipped while the launcher brings it back.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from ticketing_chaos.check import check
from ticketing_chaos.platform import endpoints
from ticketing_chaos.settle import settle
from ticketing_chaos.snapshot import take_snapshot
from ticketing_common.events.models import Subject
from ticketing_local.datafolder import process_start_ticks
from ticketing_local.launcher import replica_name
from ticketing_local.routing import RoutingTable

from .local_platform import EVENTUAL, LocalPlatform, User, running_platform, wait_until

pytestmark = pytest.mark.timeout(300)

PURCHASES = 8


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    with running_platform(tmp_path_factory.mktemp("replicas"), REPLICAS="2") as platform:
        yield platform


def served_by(platform: LocalPlatform, path: str) -> set[str]:
    """The processes whose access log has a request for ``path``."""
    line = re.compile(rf"^(\S+)\s+\| .*ticketing\.access: \[\w+\] \w+ {re.escape(path)} ")
    return {m[1] for m in map(line.match, platform.output().splitlines()) if m}


def test_every_replica_of_every_service_serves_requests(platform: LocalPlatform) -> None:
    assert platform.status()["replicas"] == 2
    expected = {}  # a path only this test asks for, per service: who must have served it
    with platform.client() as http:
        for route in RoutingTable.load().routes:
            path = f"{route.prefix.rstrip('/')}/replica-probe-{uuid.uuid4().hex}"
            for _ in range(6):
                assert http.get(path).status_code < 500
            expected[path] = {replica_name(route.service, 1), replica_name(route.service, 2)}

    def seen() -> dict[str, set[str]]:
        return {path: served_by(platform, path) for path in expected}

    wait_until(lambda: seen() == expected, 10, f"every replica to serve: {expected}")


def test_concurrent_purchases_each_propagate_exactly_once(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    seller = new_user()
    tickets = [seller.list_ticket(f"Gig {i}", "20") for i in range(PURCHASES)]
    buyers = [new_user() for _ in range(PURCHASES)]

    def buy(buyer: User, ticket_id: str) -> str:
        order_id: str = buyer.order(ticket_id)["id"]
        paid = buyer.pay(order_id)
        assert paid.status_code == 201, paid.text
        return order_id

    with ThreadPoolExecutor(PURCHASES) as pool:
        order_ids = list(pool.map(buy, buyers, [t["id"] for t in tickets]))

    # Every outbox drained, every consumer caught up, every order complete or cancelled.
    assert asyncio.run(settle(platform.data, EVENTUAL)) == []
    snapshot = asyncio.run(
        take_snapshot(endpoints(platform.data), platform.data.monitor_credentials())
    )
    # Every event in the stream once, handled once by each consumer; replicas current.
    assert snapshot.duplicate_events == []
    assert check(snapshot).violations == []
    # Each order.created was taken by one tickets replica, once: one reservation each.
    ours = {uuid.UUID(t["id"]) for t in tickets}
    updates = Counter(e.data["id"] for e in snapshot.events[Subject.TICKET_UPDATED].values())
    assert {uuid.UUID(i): n for i, n in updates.items() if uuid.UUID(i) in ours} == dict.fromkeys(
        ours, 1
    )
    assert {r["id"]: r["version"] for r in snapshot.tickets if r["id"] in ours} == dict.fromkeys(
        ours, 1
    )
    created = {e.data["id"] for e in snapshot.events[Subject.ORDER_CREATED].values()}
    assert set(order_ids) <= created
    statuses = {str(r["id"]): r["status"] for r in snapshot.orders}
    assert {statuses[i] for i in order_ids} == {"complete"}


def test_a_killed_replica_is_skipped_until_it_is_back(
    platform: LocalPlatform, new_user: Callable[[], User]
) -> None:
    seller = new_user()
    victim = replica_name("tickets", 2)
    before = platform.status()["processes"][victim]
    os.kill(before["pid"], signal.SIGKILL)
    # At once, while it is down: every request is answered, reads and writes alike.
    with platform.client() as http:
        for _ in range(6):
            assert http.get("/api/tickets").status_code == 200
    for i in range(4):
        seller.list_ticket(f"During the outage {i}", "15")

    def back() -> bool:
        info = platform.status()["processes"].get(victim)
        return bool(
            info
            and info["pid"] != before["pid"]
            and process_start_ticks(info["pid"]) == info["startTicks"]
        )

    wait_until(back, EVENTUAL, f"{victim} to be restarted")

    # And back in the edge's rotation once its fail duration is over: it serves again.
    path = f"/api/tickets/replica-probe-{uuid.uuid4().hex}"

    def serving_again() -> bool:
        with platform.client() as http:
            assert http.get(path).status_code < 500
        return victim in served_by(platform, path)

    wait_until(serving_again, EVENTUAL, f"{victim} to serve again", interval=0.5)
