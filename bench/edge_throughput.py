"""Throughput of the local edge: requests per second through Caddy, against the service direct.

A small stand-in service (a Starlette app on uvicorn, answering a little JSON) runs on
loopback; the same bounded load (``--requests`` GETs from ``--concurrency`` clients at once)
goes to it direct, then through the edge as local mode configures it. The gap between the
two is the edge's cost. Run: ``.venv/bin/python bench/edge_throughput.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from ticketing_common.embedded import free_port, wait_for_port
from ticketing_common.http import outbound_client
from ticketing_local.edge import caddy_binary, caddy_environment, write_config
from ticketing_local.routing import RoutingTable

SERVICE = textwrap.dedent(
    """
    import sys, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def current_user(request):
        return JSONResponse({"currentUser": None})

    app = Starlette(routes=[Route("/api/users/currentuser", current_user)])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


@contextlib.contextmanager
def running(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 30, process)
        yield
    finally:
        process.terminate()
        process.wait(15)


async def load(url: str, requests: int, concurrency: int) -> float:
    """Requests per second for ``requests`` GETs of ``url``, ``concurrency`` at a time."""
    remaining = iter(range(requests))

    async def worker() -> None:
        async with outbound_client(timeout=30) as client:
            for _ in remaining:
                response = await client.get(url)
                assert response.status_code == 200, response.text

    await load_warm_up(url)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def load_warm_up(url: str) -> None:
    async with outbound_client(timeout=30) as client:
        for _ in range(50):
            await client.get(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    path = "/api/users/currentuser"
    service_port, edge_port = free_port(), free_port()
    results: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running([sys.executable, "-c", SERVICE, str(service_port)], service_port),
    ):
        service = f"http://127.0.0.1:{service_port}"
        results["direct"] = asyncio.run(load(service + path, args.requests, args.concurrency))
        state = Path(tmp) / "edge"
        config = write_config(state, RoutingTable.load(), {"auth": service}, edge_port)
        caddy = [caddy_binary(), "run", "--config", str(config)]
        with running(caddy, edge_port, caddy_environment(state)):
            results["caddy"] = asyncio.run(
                load(f"http://127.0.0.1:{edge_port}{path}", args.requests, args.concurrency)
            )
    for name, rate in results.items():
        print(
            f"{name:<8} {rate:8.0f} requests/s ({args.requests} GETs, {args.concurrency} at once)"
        )


if __name__ == "__main__":
    main()
