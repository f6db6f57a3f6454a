"""The parts of the docs written from the event contracts and the catalog.

``docs/events.md`` is rendered whole from the AsyncAPI document. ``docs/architecture.md`` is
written by hand around blocks marked ``<!-- generated: NAME -->`` ... ``<!-- end generated -->``,
whose content comes from here, so a diagram cannot drift from the catalog.
"""

from __future__ import annotations

import re
from typing import Any

from ticketing_common.events.catalog import CATALOG, ServiceEvents, publisher_of
from ticketing_common.events.models import Subject
from ticketing_common.messaging.streams import MAX_AGE_SECONDS

GENERATED_BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n).*?(<!-- end generated -->)", re.DOTALL
)


def fill_generated_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each marked block's content replaced by ``blocks[name]``."""
    missing = blocks.keys() - {m["name"] for m in GENERATED_BLOCK.finditer(text)}
    if missing:
        raise ValueError(f"no generated block named {', '.join(sorted(missing))}")

    def fill(match: re.Match[str]) -> str:
        return match[1] + blocks[match["name"]] + match[3]

    return GENERATED_BLOCK.sub(fill, text)


def services_flowchart() -> str:
    """Each service with its database, and the subjects it publishes to and consumes from NATS."""
    lines = ["```mermaid", "flowchart LR", '    nats{{"NATS JetStream<br/>stream EVENTS"}}']
    for service, events in CATALOG.items():
        lines += [
            f'    {service}["{service}"] --- {service}_db[("{service} db")]',
            *_flow_edges(service, events),
        ]
    return "\n".join([*lines, "```", ""])


def _flow_edges(service: str, events: ServiceEvents) -> list[str]:
    edges = []
    if events.publishes:
        # A scheduled event is fired by the server from the schedule the service published.
        via = "<br/>(by message schedule)" if events.scheduled else ""
        edges.append(f'    {service} -- "{_subjects(events.publishes)}{via}" --> nats')
    if events.consumes:
        edges.append(f'    nats -- "{_subjects(events.consumes)}" --> {service}')
    return edges


def _subjects(subjects: tuple[Subject, ...]) -> str:
    return "<br/>".join(subject.value for subject in subjects)


def consumers_of(subject: Subject) -> list[str]:
    return [name for name, events in CATALOG.items() if subject in events.consumes]


def events_markdown(asyncapi: dict[str, Any]) -> str:
    schemas = asyncapi["components"]["schemas"]
    order = list(Subject)  # the order of the flow, as the models list them
    messages = sorted(
        asyncapi["components"]["messages"].values(), key=lambda m: order.index(m["name"])
    )
    headers = messages[0]["headers"]["properties"]
    lines = [
        "# Events",
        "",
        "<!-- Written by `make contracts` from the event models: edit the models, not this. -->",
        "",
        asyncapi["info"]["description"],
        "",
        "The machine-readable contracts are [`events.schema.json`]"
        "(../common/contracts/events.schema.json) (JSON Schema 2020-12: it validates a whole "
        "envelope, its `data` against the model of its `subject`) and [`asyncapi.json`]"
        "(../common/contracts/asyncapi.json) (AsyncAPI 3).",
        "",
        "## Subjects",
        "",
        "| subject | data | published by | consumed by |",
        "|---|---|---|---|",
    ]
    for message in messages:
        subject = Subject(message["name"])
        lines.append(
            f"| [`{subject}`](#{_anchor(subject)}) | `{message['title']}` "
            f"| {publisher_of(subject)} | {', '.join(consumers_of(subject)) or '-'} |"
        )
    lines += ["", "## The envelope", "", *_field_table(schemas["EventEnvelope"], schemas)]
    lines += ["", "Headers of every message:", "", "| header | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {h['description']} |" for name, h in sorted(headers.items())]
    for message in messages:
        data = schemas[message["title"]]
        lines += ["", f"## {message['name']}", "", *_field_table(data, schemas)]
    return "\n".join([*lines, "", NOTES])


def _anchor(subject: Subject) -> str:
    return subject.value.replace(".", "")


def _field_table(schema: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    rows = ["| field | type | required |", "|---|---|---|"]
    return rows + [
        f"| `{name}` | {type_} | {'yes' if required else 'no'} |"
        for name, type_, required in _fields(schema, schemas, "")
    ]


def _fields(
    schema: dict[str, Any], schemas: dict[str, Any], prefix: str
) -> list[tuple[str, str, bool]]:
    required = set(schema.get("required", ()))
    fields = []
    for name, field in schema["properties"].items():
        target = _resolve(field, schemas)
        fields.append((prefix + name, _type(field, schemas), name in required))
        if "properties" in target:  # a nested object: its fields follow, dotted
            fields += _fields(target, schemas, f"{prefix}{name}.")
    return fields


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        resolved: dict[str, Any] = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return resolved
    return schema


def _type(schema: dict[str, Any], schemas: dict[str, Any]) -> str:
    schema = _resolve(schema, schemas)
    if "anyOf" in schema:
        return " or ".join(_type(option, schemas) for option in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    if "properties" in schema:
        return "object"
    described = schema.get("type", "any")
    if "format" in schema:
        described += f" ({schema['format']})"
    if "examples" in schema:
        described += f", e.g. `{schema['examples'][0]}`"
    return str(described)


RETENTION_DAYS = MAX_AGE_SECONDS // (24 * 3600)

# After the generated tables: what the models cannot say.
NOTES = f"""## Timers in the stream

Expiration does not publish `expiration.complete` itself: for each order it puts the event, as a
JetStream message schedule, on `schedule.expiration.<orderId>` (headers `Nats-Schedule: @at
<expiresAt>` and `Nats-Schedule-Target: expiration.complete`), and the server publishes it to
`expiration.complete` at that time, then removes the schedule. So the stream also holds, for each
order not yet expired, one message on a `schedule.` subject whose body is the
`expiration.complete` envelope. The services' consumers filter on the subjects above and never
see these; a reader of the whole stream (like the Node.js one below) does, and tells them by
their `Nats-Schedule-Target` header, which names the subject the envelope is for. The event a
timer fires carries the schedule's `X-Request-Id` but no `Nats-Msg-Id` (the server does not copy
it); its envelope id is still the event id every inbox goes by.

## Changing an event

Consumers in every service (and in any language) read these events, and the stream keeps them
for {RETENTION_DAYS} days: a parked event may be replayed after an upgrade. So a change must let
an old consumer read a new event and a new consumer an old one. The only such change is **adding
an optional field**. Anything else (removing or renaming a field, changing its type, making a
field required or optional, removing or adding an enum value) needs a new version of the event:
a new subject (say `order.created.v2`) with its own model, published beside the old one until
every consumer has moved.

`common/contracts/released/` holds each subject's schema as released. `make contracts` records
an addition there and refuses a breaking change ("make a new version of the event"), and
`tests/contracts/test_compatibility.py` fails on one.

## Reading the events from another language

[`tests/contracts/node_consumer/`](../tests/contracts/node_consumer/consumer.mjs) is a small
Node.js consumer: it reads the stream from the start with an ordered consumer and validates each
envelope against `events.schema.json` with Ajv. A system test runs it against the platform.
"""
