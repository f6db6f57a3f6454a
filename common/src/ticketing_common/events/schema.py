"""Export the event contracts as JSON Schema and an AsyncAPI document.

``ticketing-schemas`` writes ``common/contracts/``; ``ticketing-schemas --check`` fails when the
committed files differ from the models (a test runs it, so a stale contract cannot land).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ticketing_common.events.models import EVENT_TYPES, EventEnvelope

CONTRACTS_DIR = Path(__file__).resolve().parents[3] / "contracts"
STREAM_NAME = "EVENTS"


def build_documents() -> dict[str, dict[str, Any]]:
    mode: Literal["serialization"] = "serialization"
    models: list[tuple[type[BaseModel], Literal["serialization"]]] = [(EventEnvelope, mode)]
    models += [(cls, mode) for cls in EVENT_TYPES.values()]
    _, schema = models_json_schema(
        models, by_alias=True, ref_template="#/components/schemas/{model}"
    )
    components = schema["$defs"]
    messages = {
        cls.__name__: {
            "name": subject.value,
            "title": cls.__name__,
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {"type": "string", "description": "equals the envelope id"},
                    "X-Request-Id": {"type": "string", "description": "the causing request"},
                },
            },
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/EventEnvelope"},
                    {
                        "type": "object",
                        "properties": {
                            "subject": {"const": subject.value},
                            "data": {"$ref": f"#/components/schemas/{cls.__name__}"},
                        },
                    },
                ]
            },
        }
        for subject, cls in EVENT_TYPES.items()
    }
    asyncapi = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Ticketing events",
            "version": "1.0.0",
            "description": (
                f"Every event travels on JetStream stream {STREAM_NAME} as a JSON envelope "
                "{id, subject, occurredAt, data}; the envelope id is the Nats-Msg-Id."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            cls.__name__: {
                "address": subject.value,
                "messages": {cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"}},
            }
            for subject, cls in EVENT_TYPES.items()
        },
        "components": {"schemas": components, "messages": messages},
    }
    json_schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Ticketing event contracts",
        "$defs": {
            name: json.loads(json.dumps(s).replace("#/components/schemas/", "#/$defs/"))
            for name, s in components.items()
        },
    }
    return {"asyncapi.json": asyncapi, "events.schema.json": json_schema}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def stale_files(directory: Path = CONTRACTS_DIR) -> list[str]:
    return [
        name
        for name, document in build_documents().items()
        if not (directory / name).exists() or (directory / name).read_text() != render(document)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    parser.add_argument("--out", type=Path, default=CONTRACTS_DIR)
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print(f"stale contracts in {args.out}: {', '.join(stale)}; run ticketing-schemas")
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, document in build_documents().items():
        (args.out / name).write_text(render(document))
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
