"""The load generator: a lean HTTP/1.1 keep-alive client and the two ways of offering load.

A general-purpose client (httpx) spends more CPU per request than the bare reference app does
to answer it, so on a 2-core machine it would measure itself. This one writes the request bytes
by hand and parses the answer with httptools (uvicorn's own parser): cheap enough to saturate a
server on the same machine. It keeps no cookie jar: the session cookie is a header per request.

- ``closed_loop``: N connections, each sending its next request as soon as the last is answered
  (saturation: what the server can do flat out);
- ``open_loop``: requests sent on a fixed schedule whatever the answers (a steady offered rate);
  latency counts from the scheduled send time, so a server that falls behind is not flattered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: Any = None  # sent as JSON when not None
    headers: Mapping[str, str] = field(default_factory=dict)
    tag: Any = None  # the caller's note (a ticket id...), handed back with the answer


@dataclass
class Answer:
    request: Request
    status: int  # 0: the connection failed
    body: bytes
    sent: float  # loop time the request was (scheduled to be) sent
    done: float  # loop time its answer was complete

    @property
    def latency(self) -> float:
        return self.done - self.sent

    def json(self) -> Any:
        return json.loads(self.body)


class _Message:
    """httptools callbacks: collects one response."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


class Connection:
    """One keep-alive connection; reopened when the server closes it."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: Request, sent: float | None = None) -> Answer:
        loop = asyncio.get_running_loop()
        started = loop.time() if sent is None else sent
        try:
            status, body = await self._exchange(self._encode(request))
        except OSError:
            self.close()
            status, body = 0, b""
        return Answer(request, status, body, started, loop.time())

    async def connect(self) -> None:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def _encode(self, request: Request) -> bytes:
        body = b"" if request.body is None else json.dumps(request.body).encode()
        lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        if request.body is not None:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        reused = self._writer is not None
        await self.connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(data)
        message = _Message()
        parser = httptools.HttpResponseParser(message)
        while not message.complete:
            chunk = await self._reader.read(65536)
            if not chunk:
                self.close()
                if reused and not message.body:
                    # The server closed an idle keep-alive connection before reading this
                    # request: it never saw it, so sending it on a fresh one is safe.
                    return await self._exchange(data)
                raise ConnectionResetError("the server closed the connection mid-answer")
            parser.feed_data(chunk)
        if not parser.should_keep_alive():
            self.close()
        return int(parser.get_status_code()), bytes(message.body)


def connections(base_url: str, count: int) -> list[Connection]:
    return [Connection(base_url) for _ in range(count)]


async def closed_loop(
    pool: Sequence[Connection],
    requests: Iterator[Request],
    seconds: float,
) -> list[Answer]:
    """Every connection sends back to back until ``seconds`` pass or the requests run out."""
    deadline = asyncio.get_running_loop().time() + seconds
    answers: list[Answer] = []

    async def worker(connection: Connection) -> None:
        while asyncio.get_running_loop().time() < deadline:
            request = next(requests, None)
            if request is None:
                return
            answers.append(await connection.send(request))

    await asyncio.gather(*(worker(c) for c in pool))
    return answers


async def open_loop(
    pool: Sequence[Connection],
    requests: Sequence[Request],
    rate: float,
) -> list[Answer]:
    """Send ``requests`` at ``rate`` per second, each on a free connection of ``pool``.

    When every connection is busy the schedule slips, and the wait counts in the latency.
    """
    loop = asyncio.get_running_loop()
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in pool:
        free.put_nowait(connection)
    answers: list[Answer] = []

    async def one(connection: Connection, request: Request, scheduled: float) -> None:
        answers.append(await connection.send(request, sent=scheduled))
        free.put_nowait(connection)

    tasks = []
    start = loop.time()
    for i, request in enumerate(requests):
        scheduled = start + i / rate
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        connection = await free.get()
        tasks.append(asyncio.create_task(one(connection, request, scheduled)))
    await asyncio.gather(*tasks)
    return answers


async def all_at_once(base_url: str, requests: Sequence[Request]) -> list[Answer]:
    """Each request on its own fresh connection, all sent together (a crowd, not a queue)."""
    pool = connections(base_url, len(requests))
    try:
        # Connect first, so the requests themselves leave as close together as possible.
        await asyncio.gather(*(c.connect() for c in pool))
        return list(await asyncio.gather(*(c.send(r) for c, r in zip(pool, requests, strict=True))))
    finally:
        for connection in pool:
            connection.close()


def rate(answers: Sequence[Answer]) -> float:
    """Answers per second over the span they took."""
    if not answers:
        return 0.0
    span = max(a.done for a in answers) - min(a.sent for a in answers)
    return len(answers) / span if span > 0 else 0.0


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
