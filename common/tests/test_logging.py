"""Log lines cannot be forged: whatever a request carries, one record stays one line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from ticketing_common.errors import install_error_handlers
from ticketing_common.observability import (
    JsonFormatter,
    RequestIdMiddleware,
    TextFormatter,
    escape_controls,
)

# What an attacker puts in a path: a line break and a line that looks like ours.
FORGED = "INFO    ticketing.access: GET /api/users/currentuser status=200"
NASTY_PATHS = [
    "/things/%0a" + FORGED.replace(" ", "%20"),
    "/things/%0d%0a" + FORGED.replace(" ", "%20"),
    "/things/%c2%85" + FORGED.replace(" ", "%20"),  # NEL
    "/things/%e2%80%a8" + FORGED.replace(" ", "%20"),  # LINE SEPARATOR
    "/things/%e2%80%aegnp.exe",  # RIGHT-TO-LEFT OVERRIDE
    "/things/%1b[2K%1b[1G" + FORGED.replace(" ", "%20"),  # terminal: erase the line
]


def make_app() -> FastAPI:
    # As the app factory wires them: the error handlers, and the middleware that logs access
    # lines and unhandled errors.
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError("bad input:\n" + FORGED)

    return app


@pytest.fixture(params=[TextFormatter, JsonFormatter])
def log_output(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(request.param())
    ours = logging.getLogger("ticketing")  # the access and error logs, not httpx's
    level = ours.level
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    yield stream
    ours.removeHandler(handler)
    ours.setLevel(level)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def records(output: io.StringIO) -> list[str]:
    # splitlines: every character some reader takes as a line break (NEL, U+2028...).
    return output.getvalue().splitlines()


@pytest.mark.parametrize("path", NASTY_PATHS)
async def test_a_path_cannot_forge_a_log_line(
    client: httpx.AsyncClient, log_output: io.StringIO, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    [line] = records(log_output)
    assert "status=404" in line or '"status": 404' in line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)
    assert "\u2028" not in line and "\u202e" not in line
    if line.startswith("{"):
        assert json.loads(line)["message"].startswith("GET /things/")


def test_text_lines_escape_controls_readably() -> None:
    assert escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_controls("\x00\x1b\x7f\x85") == "\\x00\\x1b\\x7f\\x85"
    assert escape_controls("\u2028\u202e\u2066\u061c") == "\\u2028\\u202e\\u2066\\u061c"
    assert escape_controls("Café 日本語 👩\u200d👩\u200d👧") == "Café 日本語 👩\u200d👩\u200d👧"


async def test_a_traceback_cannot_forge_a_record_either(
    client: httpx.AsyncClient, log_output: io.StringIO
) -> None:
    response = await client.get("/boom")
    assert response.status_code == 500
    lines = records(log_output)
    # The error record and the access record; a text traceback's lines are marked as its own.
    starts = [line for line in lines if not line.startswith("    | ")]
    assert len(starts) == 2
    assert not any(line.startswith(FORGED) for line in lines)
    if lines[0].startswith("{"):
        assert "bad input:\n" + FORGED in json.loads(lines[0])["exception"]
    else:
        assert any(line == "    | ValueError: bad input:" for line in lines)
