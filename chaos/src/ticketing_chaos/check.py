"""The invariant checker: reads every database and the event stream of a running platform,
prints what it counted and every violation (with ids), and exits 1 if there is any.

``python -m ticketing_chaos.check [--data-dir .data]``, while the platform runs (after a chaos
run, or any time during ``make up``; on a busy platform an event in flight shows as not yet
handled). The invariants:

a. every event in the stream whose subject a service consumes is in that service's inbox
   (handled exactly once in effect: the inbox key admits it once), and no inbox holds an
   event the stream does not;
b. no ticket has two live (not cancelled) orders, and each ticket's ``orderId`` (tickets) is
   its live order in orders, or null when it has none;
c. every complete order has exactly one succeeded payment and no refund;
d. every cancelled order holds no money: its payment, if any, was voided, or refunded with a
   ``payment.refunded`` event;
e. every outbox is drained: no row unpublished, none given up on (``failed_at``);
f. nothing is parked;
g. replicas equal their sources: orders' copy of each ticket has the ticket's version;
   payments' copy of each order has the last version orders published for it (orders also
   bumps the version on completion, which no event carries) and the same cancelled-or-not;
h. every order is on its ticket's terms: its price is the one tickets had when it reserved
   the ticket for that order (the ``ticket.updated`` that set its ``orderId``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from ticketing_chaos.platform import PlatformError, endpoints
from ticketing_chaos.snapshot import Snapshot, take_snapshot
from ticketing_common.events.catalog import CATALOG
from ticketing_common.events.models import EventEnvelope, OrderStatus, Subject
from ticketing_local.datafolder import DataFolder
from ticketing_local.routing import REPO_ROOT

LIVE = "live"  # any order status but cancelled holds its ticket
HOLDS_MONEY = {"succeeded", "pending"}


@dataclass
class Report:
    counts: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def count(self, what: str, counter: Counter[str] | dict[str, int]) -> None:
        self.counts.append(
            f"{what}: " + (", ".join(f"{k} {v}" for k, v in counter.items()) or "none")
        )

    def violation(self, rule: str, detail: str) -> None:
        self.violations.append(f"[{rule}] {detail}")

    def render(self) -> str:
        lines = ["counts:", *(f"  {c}" for c in self.counts)]
        if self.violations:
            lines += [f"{len(self.violations)} violation(s):", *(f"  {v}" for v in self.violations)]
        else:
            lines.append("no violations")
        return "\n".join(lines)


def check(snapshot: Snapshot) -> Report:
    report = Report()
    report.count("events in the stream", {s.value: len(snapshot.events[s]) for s in Subject})
    if snapshot.duplicate_events:
        report.count(
            "events stored twice (same id)", Counter(str(i) for i in snapshot.duplicate_events)
        )
    report.count("handled (inbox rows)", {db: len(ids) for db, ids in snapshot.inbox.items()})
    _every_event_handled_once(snapshot, report)
    _one_live_order_per_ticket(snapshot, report)
    _money(snapshot, report)
    _drained(snapshot, report)
    _replicas(snapshot, report)
    _ticket_terms(snapshot, report)
    return report


def _every_event_handled_once(snapshot: Snapshot, report: Report) -> None:
    for service, events in CATALOG.items():
        if not events.consumes:
            continue
        inbox = snapshot.inbox[service]
        parked = {row["event_id"] for row in snapshot.parked[service]}
        consumed: set[uuid.UUID] = set()
        for subject in events.consumes:
            for event_id in snapshot.events[subject]:
                consumed.add(event_id)
                if event_id not in inbox:
                    why = "parked" if event_id in parked else "not handled"
                    report.violation("handled once", f"{service}: {subject} {event_id} {why}")
        for event_id in sorted(inbox - consumed, key=str):
            report.violation("handled once", f"{service}: handled {event_id}, not in the stream")


def _one_live_order_per_ticket(snapshot: Snapshot, report: Report) -> None:
    live: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for order in snapshot.orders:
        if order["status"] != OrderStatus.CANCELLED:
            live[order["ticket_id"]].append(order["id"])
    for ticket_id, orders in live.items():
        if len(orders) > 1:
            ids = ", ".join(map(str, orders))
            report.violation("one live order", f"ticket {ticket_id} has live orders {ids}")
    reserved = 0
    for ticket in snapshot.tickets:
        holders = live.get(ticket["id"], [])
        expected = holders[0] if len(holders) == 1 else None
        reserved += ticket["order_id"] is not None
        if len(holders) <= 1 and ticket["order_id"] != expected:
            report.violation(
                "one live order",
                f"ticket {ticket['id']} is held by order {ticket['order_id']} in tickets, "
                f"by {expected} in orders",
            )
    report.count("tickets", {"total": len(snapshot.tickets), "reserved": reserved})
    report.count("orders by status", Counter(o["status"] for o in snapshot.orders))


def _money(snapshot: Snapshot, report: Report) -> None:
    refunds: dict[uuid.UUID, int] = Counter(
        uuid.UUID(e.data["orderId"]) for e in snapshot.events[Subject.PAYMENT_REFUNDED].values()
    )
    payments: dict[uuid.UUID, list[dict[str, object]]] = defaultdict(list)
    for payment in snapshot.payments:
        payments[payment["order_id"]].append(payment)
    report.count("payments by status", Counter(p["status"] for p in snapshot.payments))
    for order in snapshot.orders:
        statuses = [p["status"] for p in payments.get(order["id"], [])]
        if order["status"] == OrderStatus.COMPLETE:
            if statuses != ["succeeded"]:
                report.violation(
                    "complete is paid once",
                    f"complete order {order['id']} has payments {statuses or 'none'}",
                )
            if refunds.get(order["id"]):
                report.violation("complete is paid once", f"complete order {order['id']} refunded")
        elif order["status"] == OrderStatus.CANCELLED:
            if HOLDS_MONEY & set(statuses):
                report.violation(
                    "cancelled holds no money",
                    f"cancelled order {order['id']} has payments {statuses}",
                )
            if "refunded" in statuses and not refunds.get(order["id"]):
                report.violation(
                    "cancelled holds no money",
                    f"cancelled order {order['id']} refunded without a payment.refunded event",
                )


def _drained(snapshot: Snapshot, report: Report) -> None:
    report.count("outbox rows unpublished", {db: len(r) for db, r in snapshot.unsent.items()})
    report.count("parked events", {db: len(r) for db, r in snapshot.parked.items()})
    for database, rows in snapshot.unsent.items():
        for row in rows:
            state = f"given up at {row['failed_at']}" if row["failed_at"] else "unsent"
            report.violation(
                "outbox drained",
                f"{database}: outbox {row['id']} ({row['nats_subject']}) {state} after "
                f"{row['attempts']} attempts: {row['last_error']}",
            )
    for database, rows in snapshot.parked.items():
        for row in rows:
            report.violation(
                "nothing parked",
                f"{database}: {row['subject']} {row['event_id']} after {row['deliveries']} "
                f"deliveries: {str(row['error'])[:300]}",
            )


def _replicas(snapshot: Snapshot, report: Report) -> None:
    for ticket in snapshot.tickets:
        replica = snapshot.ticket_replicas.get(ticket["id"])
        if replica is None or replica["version"] != ticket["version"]:
            seen = "missing" if replica is None else f"v{replica['version']}"
            report.violation(
                "replica current",
                f"orders' copy of ticket {ticket['id']} is {seen}, tickets has "
                f"v{ticket['version']}",
            )
    published: dict[uuid.UUID, int] = defaultdict(int)
    for subject in (Subject.ORDER_CREATED, Subject.ORDER_CANCELLED):
        for event in snapshot.events[subject].values():
            order_id = uuid.UUID(event.data["id"])
            published[order_id] = max(published[order_id], event.data["version"])
    for order in snapshot.orders:
        replica = snapshot.order_replicas.get(order["id"])
        cancelled = order["status"] == OrderStatus.CANCELLED
        if (
            replica is None
            or replica["version"] != published.get(order["id"])
            or (replica["status"] == OrderStatus.CANCELLED) != cancelled
        ):
            seen = "missing" if replica is None else f"v{replica['version']} {replica['status']}"
            report.violation(
                "replica current",
                f"payments' copy of order {order['id']} is {seen}, orders has "
                f"v{order['version']} {order['status']} (published v{published.get(order['id'])})",
            )
    report.count(
        "replicas checked",
        {"tickets in orders": len(snapshot.tickets), "orders in payments": len(snapshot.orders)},
    )


def _ticket_terms(snapshot: Snapshot, report: Report) -> None:
    reservations: dict[uuid.UUID, EventEnvelope] = {}
    for event in snapshot.events[Subject.TICKET_UPDATED].values():
        order_id = event.data.get("orderId")
        if order_id is None:
            continue
        first = reservations.get(uuid.UUID(order_id))
        if first is None or event.data["version"] < first.data["version"]:
            reservations[uuid.UUID(order_id)] = event
    for order in snapshot.orders:
        reservation = reservations.get(order["id"])
        if reservation is None:
            continue  # never reserved: cancelled before tickets heard of it
        reserved_at = Decimal(str(reservation.data["price"]))
        if order["ticket_price"] != reserved_at:
            report.violation(
                "ticket's terms",
                f"order {order['id']} ({order['status']}) is at {order['ticket_price']}; "
                f"tickets reserved ticket {order['ticket_id']} for it at {reserved_at} "
                f"(v{reservation.data['version']})",
            )
    report.count("orders checked against their reservation", {"reserved": len(reservations)})


async def run_check(data: DataFolder) -> Report:
    snapshot = await take_snapshot(endpoints(data), data.monitor_credentials())
    return check(snapshot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ticketing_chaos.check", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TICKETING_DATA_DIR", REPO_ROOT / ".data")),
        help="the running platform's data folder (default: .data/)",
    )
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(run_check(DataFolder(args.data_dir)))
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.render(), flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
