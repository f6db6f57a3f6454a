"""The committed event contracts (and the docs made from them) match the models, and the
envelope round-trips."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from ticketing_common.events import (
    EVENT_TYPES,
    EventEnvelope,
    OrderCreated,
    OrderCreatedTicket,
    OrderStatus,
)
from ticketing_common.events.generate import CONTRACTS, REPO_ROOT, stale_files


def test_committed_contracts_and_docs_are_up_to_date() -> None:
    assert stale_files() == [], "run `make contracts` and commit what it wrote"


def test_asyncapi_lists_every_subject() -> None:
    document = json.loads((REPO_ROOT / CONTRACTS / "asyncapi.json").read_text())
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {subject.value for subject in EVENT_TYPES}


def test_envelope_round_trip_is_camel_case_and_exact() -> None:
    event = OrderCreated(
        id=uuid.uuid4(),
        version=0,
        status=OrderStatus.CREATED,
        user_id=uuid.uuid4(),
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
        ticket=OrderCreatedTicket(id=uuid.uuid4(), price=Decimal("0.10")),
    )
    wire = json.loads(EventEnvelope.wrap(event).model_dump_json(by_alias=True))
    assert set(wire) == {"id", "subject", "occurredAt", "data"}
    assert wire["subject"] == "order.created"
    assert wire["data"]["ticket"]["price"] == "0.10"
    assert "userId" in wire["data"] and "expiresAt" in wire["data"]
    assert EventEnvelope.model_validate(wire).event() == event
