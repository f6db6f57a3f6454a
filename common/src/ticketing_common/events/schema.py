"""Export the event contracts as JSON Schema and an AsyncAPI document.

``events.schema.json`` validates a whole envelope: its ``data`` must match the model of its
``subject``. ``event_schema`` gives one event's schema, self-contained, for the compatibility
check (``compat``). ``ticketing-schemas`` (``generate``) writes them all, with the docs.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ticketing_common.events.models import EVENT_TYPES, EventEnvelope, Subject

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
        "description": "One event envelope; its data matches the model of its subject.",
        "$ref": "#/$defs/EventEnvelope",
        # One branch per subject: a validator reports the data's errors against its own model.
        "allOf": [
            {
                "if": {
                    "type": "object",
                    "properties": {"subject": {"const": subject.value}},
                    "required": ["subject"],
                },
                "then": {
                    "type": "object",
                    "properties": {"data": {"$ref": f"#/$defs/{cls.__name__}"}},
                },
            }
            for subject, cls in EVENT_TYPES.items()
        ],
        "$defs": {
            name: json.loads(json.dumps(s).replace("#/components/schemas/", "#/$defs/"))
            for name, s in components.items()
        },
    }
    return {"asyncapi.json": asyncapi, "events.schema.json": json_schema}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def event_schema(subject: Subject, documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The envelope of ``subject`` with its data, every reference written out in place."""
    defs = documents["events.schema.json"]["$defs"]
    envelope: dict[str, Any] = inline_refs(defs["EventEnvelope"], defs)
    envelope["properties"]["subject"] = {"const": subject.value}
    envelope["properties"]["data"] = inline_refs(defs[EVENT_TYPES[subject].__name__], defs)
    envelope["title"] = subject.value
    return envelope


def inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with every ``#/.../Name`` reference replaced by ``defs[Name]``."""
    if isinstance(schema, list):
        return [inline_refs(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    inlined = {key: inline_refs(value, defs) for key, value in schema.items() if key != "$ref"}
    if "$ref" in schema:
        return inline_refs(defs[schema["$ref"].rsplit("/", 1)[-1]], defs) | inlined
    return inlined
