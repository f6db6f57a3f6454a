"""The operator's commands: `python -m <service> parked list | parked replay <id>`."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from ticketing_common.cli import service_main
from ticketing_common.db import make_engine
from ticketing_common.events import EventEnvelope, TicketCreated
from ticketing_common.messaging import Consumer
from ticketing_common.messaging.tables import parked_events
from ticketing_common.settings import ServiceSettings
from ticketing_common.testing import TestDatabase
from ticketing_common.testing.stand_ins import effects


@pytest.fixture
def keep_log_handlers() -> Iterator[None]:
    """The command configures logging for a process; give pytest its handlers back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run(database: TestDatabase, consumer: Consumer, *argv: str) -> int:
    def no_app(_: ServiceSettings) -> FastAPI:
        raise AssertionError("the parked commands never build the app")

    return service_main(
        lambda: ServiceSettings(database_url=database.url, jwt_key="k" * 40, log_json=False),
        no_app,
        consumer_factory=lambda _: consumer,
        argv=list(argv),
    )


async def park(database: TestDatabase, envelope: EventEnvelope) -> None:
    engine = make_engine(database.url)
    async with engine.begin() as conn:
        await conn.execute(
            parked_events.insert().values(
                event_id=envelope.id,
                subject=envelope.subject.value,
                envelope=envelope.model_dump(mode="json", by_alias=True),
                error="ValueError('boom')",
                deliveries=8,
            )
        )
    await engine.dispose()


@pytest.mark.usefixtures("keep_log_handlers")
def test_parked_list_and_replay(
    common_db: TestDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    consumer = Consumer("cli-test")

    @consumer.on(TicketCreated)
    async def record(session: AsyncSession, event: TicketCreated) -> None:
        await session.execute(effects.insert().values(note=event.title))

    event = TicketCreated(
        id=uuid.uuid4(), version=0, title="parked", price=Decimal(1), user_id=uuid.uuid4()
    )
    envelope = EventEnvelope.wrap(event)
    asyncio.run(park(common_db, envelope))
    try:
        assert run(common_db, consumer, "parked", "list") == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [row["event_id"] for row in listed] == [str(envelope.id)]
        assert listed[0]["error"] == "ValueError('boom')"

        assert run(common_db, consumer, "parked", "replay", str(envelope.id)) == 0
        assert "replayed" in capsys.readouterr().out
        assert run(common_db, consumer, "parked", "list") == 0
        assert capsys.readouterr().out == ""
        rows = asyncio.run(common_db.fetch("SELECT note FROM effects"))
        assert [row["note"] for row in rows] == ["parked"]

        assert run(common_db, consumer, "parked", "replay", str(uuid.uuid4())) == 1
    finally:
        asyncio.run(common_db.truncate())


def test_bad_settings_stop_the_command_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JWT_KEY", raising=False)
    monkeypatch.setenv("LOG_LEVEL", "chatty")

    def no_app(_: ServiceSettings) -> FastAPI:
        raise AssertionError("no app is built with bad settings")

    code = service_main(
        settings_factory=ServiceSettings,
        app_factory=no_app,
        argv=["serve", "--migrate"],
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("refusing to start: ")
    assert "JWT_KEY: Field required" in err and "LOG_LEVEL: Input should be" in err
    assert "Traceback" not in err
