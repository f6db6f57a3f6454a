"""An event model may change only in ways every consumer, old and new, can still read.

The released schema of each subject is kept in ``common/contracts/released/``; the models as
they are now must stay compatible with it. The checker itself is shown on hand-made changes:
the safe one (an optional field added) passes, each breaking one fails and says what to do.
"""

from __future__ import annotations

import copy
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ticketing_common.events import OrderStatus
from ticketing_common.events.compat import NEW_VERSION, breaking_changes
from ticketing_common.events.generate import (
    ARCHITECTURE_DOC,
    RELEASED,
    REPO_ROOT,
    current_event_schemas,
    incompatibilities,
    main,
    released_event_schemas,
)
from ticketing_common.events.schema import inline_refs
from ticketing_common.models import CamelModel


def test_every_event_is_released_and_compatible_with_its_release() -> None:
    assert released_event_schemas().keys() == current_event_schemas().keys()
    assert incompatibilities() == {}


@pytest.fixture
def order_created() -> dict[str, Any]:
    """The released order.created, to change by hand."""
    return copy.deepcopy(released_event_schemas()["order.created"])


def data_of(schema: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = schema["properties"]["data"]
    return data


def test_adding_an_optional_field_is_compatible(order_created: dict[str, Any]) -> None:
    changed = copy.deepcopy(order_created)
    data_of(changed)["properties"]["seat"] = {"type": "string"}
    data_of(changed)["properties"]["version"]["description"] = "words change nothing"
    assert breaking_changes(order_created, changed) == []


def _remove_field(data: dict[str, Any]) -> None:
    del data["properties"]["userId"]
    data["required"].remove("userId")


def _rename_field(data: dict[str, Any]) -> None:
    data["properties"]["buyerId"] = data["properties"].pop("userId")
    data["required"] = [("buyerId" if f == "userId" else f) for f in data["required"]]


def _change_type(data: dict[str, Any]) -> None:
    data["properties"]["version"] = {"type": "string"}


def _change_nested_type(data: dict[str, Any]) -> None:
    data["properties"]["ticket"]["properties"]["price"] = {"type": "number"}


def _make_nullable(data: dict[str, Any]) -> None:
    expires = data["properties"]["expiresAt"]
    data["properties"]["expiresAt"] = {"anyOf": [expires, {"type": "null"}]}


def _make_optional(data: dict[str, Any]) -> None:
    data["required"].remove("expiresAt")


def _add_required_field(data: dict[str, Any]) -> None:
    data["properties"]["seat"] = {"type": "string"}
    data["required"].append("seat")


def _remove_enum_value(data: dict[str, Any]) -> None:
    data["properties"]["status"]["enum"].remove("awaiting_payment")


def _add_enum_value(data: dict[str, Any]) -> None:
    data["properties"]["status"]["enum"].append("refunded")


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (_remove_field, "userId: removed"),
        (_rename_field, "userId: removed"),
        (_change_type, "version: changed from"),
        (_change_nested_type, "ticket.price: changed from"),
        (_make_nullable, "expiresAt: changed from"),
        (_make_optional, "expiresAt: no longer required"),
        (_add_required_field, "seat: added as required"),
        (_remove_enum_value, "status: value 'awaiting_payment' removed"),
        (_add_enum_value, "status: value 'refunded' added"),
    ],
)
def test_a_breaking_change_is_reported(
    order_created: dict[str, Any], change: Any, reported: str
) -> None:
    changed = copy.deepcopy(order_created)
    change(data_of(changed))
    changes = breaking_changes(order_created, changed)
    assert any(line.startswith(f"data.{reported}") for line in changes), changes


def test_an_optional_field_made_required_is_reported() -> None:
    class Before(CamelModel):
        order_id: uuid.UUID
        note: str | None = None

    class After(CamelModel):
        order_id: uuid.UUID
        note: str | None

    assert breaking_changes(schema_of(Before), schema_of(After)) == [
        "note: now required (events already sent may lack it)"
    ]


def test_a_field_added_with_a_default_is_compatible() -> None:
    class Before(CamelModel):
        order_id: uuid.UUID

    class After(CamelModel):
        order_id: uuid.UUID
        status: OrderStatus | None = None

    assert breaking_changes(schema_of(Before), schema_of(After)) == []


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    # Validation mode: a field with a default is optional, as it is for a reader.
    schema = model.model_json_schema(by_alias=True)
    inlined: dict[str, Any] = inline_refs(schema, schema.pop("$defs", {}))
    return inlined


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of what ``make contracts`` reads and writes."""
    shutil.copytree(REPO_ROOT / RELEASED, tmp_path / RELEASED)
    (tmp_path / ARCHITECTURE_DOC).parent.mkdir(parents=True)
    shutil.copy(REPO_ROOT / ARCHITECTURE_DOC, tmp_path / ARCHITECTURE_DOC)
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0
    return tmp_path


def test_make_contracts_refuses_to_release_a_breaking_change(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As if the models had just lost a field that order.created was released with.
    released = repo / RELEASED / "order.created.json"
    schema = json.loads(released.read_text())
    data_of(schema)["properties"]["seat"] = {"type": "string"}
    data_of(schema)["required"].append("seat")
    released.write_text(json.dumps(schema))
    capsys.readouterr()

    assert main(["--root", str(repo)]) == 1
    output = capsys.readouterr().out
    assert f"incompatible change to order.created; {NEW_VERSION}" in output
    assert "data.seat: removed (old consumers need it)" in output
    assert json.loads(released.read_text()) == schema  # the release is left as it was
    assert main(["--root", str(repo), "--check"]) == 1


def test_a_retired_subject_is_reported(repo: Path) -> None:
    gone = copy.deepcopy(released_event_schemas()["payment.refunded"])
    (repo / RELEASED / "payment.refunds.json").write_text(json.dumps(gone))
    assert incompatibilities(repo) == {
        "payment.refunds": [
            "payment.refunds: no longer published (its consumers still wait for it)"
        ]
    }


@pytest.mark.parametrize("generated", ["docs/events.md", "docs/architecture.md"])
def test_a_stale_doc_fails_the_check(repo: Path, generated: str) -> None:
    path = repo / generated
    path.write_text(path.read_text().replace("order.created", "order.made", 1))
    assert main(["--root", str(repo), "--check"]) == 1
    assert main(["--root", str(repo)]) == 0
    assert main(["--root", str(repo), "--check"]) == 0
