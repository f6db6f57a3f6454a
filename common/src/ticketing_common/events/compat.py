"""Can consumers built against a released event read the event as the models now describe it?

Each subject's schema as released is kept in ``common/contracts/released/<subject>.json``. The
stream keeps events for days and a parked event can be replayed after an upgrade, so the rule
works both ways: an old consumer must read a new event, and a new consumer an old one. Hence
the only change allowed is adding an optional field. Anything else (a field removed or renamed,
a type changed, a field made required or optional, an enum value removed or added) needs a new
version of the event: a new subject, published beside the old one until its consumers moved.
"""

from __future__ import annotations

import json
from typing import Any

# Words about a field, not its shape: changing them breaks no reader. (Whether a field may be
# absent is ``required``, checked on its own; its default is only what a reader assumes then.)
ANNOTATIONS = frozenset({"title", "description", "examples", "$comment", "default"})
NEW_VERSION = "make a new version of the event (a new subject) instead"


def breaking_changes(released: dict[str, Any], current: dict[str, Any], at: str = "") -> list[str]:
    """What in ``current`` a reader of ``released`` cannot handle, one line per change."""
    where = at or "the event"
    if "properties" in released and "properties" in current:
        return _object_changes(released, current, at)
    if "enum" in released and "enum" in current:
        return _enum_changes(released, current, where)
    if _shape(released) != _shape(current):
        return [f"{where}: changed from {_show(released)} to {_show(current)}"]
    return []


def _object_changes(released: dict[str, Any], current: dict[str, Any], at: str) -> list[str]:
    changes = []
    old_fields, new_fields = released["properties"], current["properties"]
    old_required, new_required = set(released.get("required", ())), set(current.get("required", ()))
    for name, schema in old_fields.items():
        field = f"{at}.{name}" if at else name
        if name not in new_fields:
            changes.append(f"{field}: removed (old consumers need it)")
            continue
        if name in old_required and name not in new_required:
            changes.append(f"{field}: no longer required (old consumers rely on it)")
        elif name in new_required and name not in old_required:
            changes.append(f"{field}: now required (events already sent may lack it)")
        changes += breaking_changes(schema, new_fields[name], field)
    for name in new_fields.keys() - old_fields.keys():
        if name in new_required:
            field = f"{at}.{name}" if at else name
            changes.append(f"{field}: added as required (events already sent lack it)")
    rest = ("properties", "required")
    if _shape(released, *rest) != _shape(current, *rest):
        where = at or "the event"
        changes.append(f"{where}: changed from {_show(released)} to {_show(current)}")
    return changes


def _enum_changes(released: dict[str, Any], current: dict[str, Any], where: str) -> list[str]:
    old, new = released["enum"], current["enum"]
    changes = [f"{where}: value {value!r} removed" for value in old if value not in new]
    changes += [
        f"{where}: value {value!r} added (old consumers reject it)"
        for value in new
        if value not in old
    ]
    if _shape(released, "enum") != _shape(current, "enum"):
        changes.append(f"{where}: changed from {_show(released)} to {_show(current)}")
    return changes


def _shape(schema: Any, *ignored: str) -> Any:
    """The schema without annotations (and without the ``ignored`` keys at the top)."""
    if isinstance(schema, list):
        return [_shape(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    skip = ANNOTATIONS | set(ignored)
    return {key: _shape(value) for key, value in schema.items() if key not in skip}


def _show(schema: dict[str, Any]) -> str:
    return json.dumps(_shape(schema), sort_keys=True)


def compatibility_report(
    released: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """Breaking changes per released subject (a subject gone is one too); empty when none."""
    report = {}
    for subject, schema in sorted(released.items()):
        if subject not in current:
            report[subject] = [f"{subject}: no longer published (its consumers still wait for it)"]
        elif changes := breaking_changes(schema, current[subject]):
            report[subject] = changes
    return report


def explain(report: dict[str, list[str]]) -> str:
    lines = [f"  {change}" for changes in report.values() for change in changes]
    subjects = ", ".join(report)
    return f"incompatible change to {subjects}; {NEW_VERSION}:\n" + "\n".join(lines)
