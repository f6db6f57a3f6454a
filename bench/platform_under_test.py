"""The platform as ``make up`` runs it, and what the bench reads of it.

The platform is ``python -m ticketing_local`` on a data folder of its own and a free port;
besides HTTP the bench reads only the launcher's status file (which process has which pid and
port), like the system tests, and goes to orders' database once: the expiry phase places its
orders there, through orders' own code. Of the processes it reads CPU time and memory; of
NATS it watches the events that say a purchase has propagated, and the consumers' backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from ticketing_common.events.catalog import CATALOG
from ticketing_common.messaging.permissions import durable_name
from ticketing_common.messaging.streams import STREAM_NAME
from ticketing_local.as_child import LauncherProcess

READY_TIMEOUT = 240.0
SERVICES = ("auth", "tickets", "orders", "expiration", "payments")
# Every service's one durable consumer: the platform is idle once none has a backlog.
DURABLES = tuple(durable_name(s) for s, events in CATALOG.items() if events.consumes)


class Platform(LauncherProcess):
    """One launcher process on a data folder."""

    def __init__(self, data_dir: Path, log_path: Path, jwt_key: str) -> None:
        super().__init__(data_dir)
        self.log_path = log_path
        self.jwt_key = jwt_key

    def start(self, **env: str) -> None:
        self.launch(self.log_path, READY_TIMEOUT, JWT_KEY=self.jwt_key, **env)

    def wipe(self) -> None:
        self.command("reset")

    @property
    def status(self) -> dict[str, Any]:
        status = self.data.read_status()
        if status is None:
            raise RuntimeError("the platform is not running (no status file)")
        return status

    def service_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.status['processes'][name]['port']}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.status['processes']['nats']['port']}"

    def processes(self) -> dict[str, int]:
        """Every process of the platform by name (the launcher too), as pids."""
        pids = {name: info["pid"] for name, info in self.status["processes"].items()}
        return {"launcher": self.status["pid"]} | pids


def _tree_cpu(pid: int, with_children: bool) -> float:
    """CPU seconds of ``pid`` and everything under it, including children already gone."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)] if with_children else [root]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = process.cpu_times()
            total += t.user + t.system
            if with_children:
                # Children that exited and were waited for (PostgreSQL backends that closed).
                total += t.children_user + t.children_system
    return total


@dataclass
class Meter:
    """CPU seconds per process of the platform across a phase, and the peak memory."""

    pids: dict[str, int]
    peak_rss: dict[str, int] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        # The launcher's children are the services, counted on their own.
        return {name: _tree_cpu(pid, name != "launcher") for name, pid in self.pids.items()}

    def rss(self, names: Iterable[str] = SERVICES) -> dict[str, int]:
        sizes = {}
        for name in names:
            with contextlib.suppress(psutil.NoSuchProcess, KeyError):
                sizes[name] = psutil.Process(self.pids[name]).memory_info().rss
        return sizes

    async def watch_memory(self, stop: asyncio.Event, interval: float = 0.25) -> None:
        """Keep the peak RSS of every service until ``stop`` is set."""
        while not stop.is_set():
            for name, size in self.rss().items():
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), size)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


@dataclass
class CpuSpan:
    before: dict[str, float]
    after: dict[str, float] = field(default_factory=dict)

    @property
    def by_process(self) -> dict[str, float]:
        return {name: self.after.get(name, 0.0) - seconds for name, seconds in self.before.items()}


class EventWatcher:
    """When each purchase showed on the bus: a ticket reserved, an order cancelled.

    ``ticket.updated`` with an ``orderId`` is tickets saying the reservation reached it (its
    change committed and relayed); ``order.cancelled`` is orders cancelling an expired order.
    It reads the stream as local mode's read-only ``monitor`` user: an ordered consumer of its
    own per subject, from new events on, sees each as JetStream stores it; the services'
    durables are only looked at (their backlog), never touched.
    """

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.reserved: dict[str, tuple[str, float]] = {}  # ticket id -> (order id, loop time)
        self.cancelled: dict[str, float] = {}  # order id -> wall clock time
        self._changed = asyncio.Event()

    @classmethod
    async def connect(cls, platform: Platform) -> EventWatcher:
        monitor = platform.data.monitor_credentials()
        nc = await nats.connect(
            platform.nats_url, name="bench", user=monitor.user, password=monitor.password
        )
        watcher = cls(nc)
        for subject, cb in (
            ("ticket.updated", watcher._on_ticket_updated),
            ("order.cancelled", watcher._on_order_cancelled),
        ):
            await watcher.js.subscribe(
                subject,
                stream=STREAM_NAME,
                cb=cb,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
            )
        return watcher

    async def close(self) -> None:
        await self.nc.close()

    async def _on_ticket_updated(self, msg: Msg) -> None:
        data = json.loads(msg.data)["data"]
        if data.get("orderId"):
            self.reserved.setdefault(
                data["id"], (data["orderId"], asyncio.get_running_loop().time())
            )
            self._changed.set()

    async def _on_order_cancelled(self, msg: Msg) -> None:
        self.cancelled.setdefault(json.loads(msg.data)["data"]["id"], time.time())
        self._changed.set()

    async def until(self, seen: dict[str, Any], keys: Iterable[str], timeout: float) -> bool:
        """Wait until every key is in ``seen`` (one of the dicts above); False on timeout."""
        missing = set(keys)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing -= seen.keys()
            if not missing:
                return True
            if loop.time() > deadline:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())

    async def until_quiet(self, timeout: float, stream: str = STREAM_NAME) -> bool:
        """Wait until every consumer has handled every event and nothing new was published."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_seq = -1
        while loop.time() < deadline:
            consumers = [await self.js.consumer_info(stream, d) for d in DURABLES]
            busy = any(c.num_pending or c.num_ack_pending for c in consumers)
            seq = (await self.js.stream_info(stream)).state.last_seq
            if not busy and seq == last_seq:
                return True
            last_seq = -1 if busy else seq
            await asyncio.sleep(0.25)
        return False
