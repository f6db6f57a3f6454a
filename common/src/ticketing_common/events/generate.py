"""``ticketing-schemas`` (``make contracts``): write the event contracts and the docs from them.

It writes, under the repository root: ``common/contracts/events.schema.json`` and
``asyncapi.json``; ``common/contracts/released/<subject>.json`` for a new subject or an added
optional field (a breaking change is refused, see ``compat``); ``docs/events.md``; and the
generated blocks of ``docs/architecture.md``. ``--check`` writes nothing and fails when any of
them is stale or a change is breaking (a test runs it, so neither can land).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ticketing_common.events.compat import compatibility_report, explain
from ticketing_common.events.docs import events_markdown, fill_generated_blocks, services_flowchart
from ticketing_common.events.models import EVENT_TYPES
from ticketing_common.events.schema import build_documents, event_schema, render

REPO_ROOT = Path(__file__).resolve().parents[4]
CONTRACTS = Path("common/contracts")
RELEASED = CONTRACTS / "released"
EVENTS_DOC = Path("docs/events.md")
ARCHITECTURE_DOC = Path("docs/architecture.md")


def current_event_schemas() -> dict[str, dict[str, Any]]:
    documents = build_documents()
    return {subject.value: event_schema(subject, documents) for subject in EVENT_TYPES}


def released_event_schemas(root: Path = REPO_ROOT) -> dict[str, dict[str, Any]]:
    return {
        path.name.removesuffix(".json"): json.loads(path.read_text())
        for path in sorted((root / RELEASED).glob("*.json"))
    }


def incompatibilities(root: Path = REPO_ROOT) -> dict[str, list[str]]:
    return compatibility_report(released_event_schemas(root), current_event_schemas())


def generated_files(root: Path = REPO_ROOT) -> dict[Path, str]:
    """Every generated file (relative to ``root``) with the content it should have."""
    documents = build_documents()
    files = {CONTRACTS / name: render(document) for name, document in documents.items()}
    files |= {
        RELEASED / f"{subject}.json": render(schema)
        for subject, schema in current_event_schemas().items()
    }
    files[EVENTS_DOC] = events_markdown(documents["asyncapi.json"])
    files[ARCHITECTURE_DOC] = fill_generated_blocks(
        (root / ARCHITECTURE_DOC).read_text(), {"services": services_flowchart()}
    )
    return files


def stale_files(root: Path = REPO_ROOT) -> list[str]:
    return [
        str(path)
        for path, content in generated_files(root).items()
        if not (root / path).exists() or (root / path).read_text() != content
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository")
    args = parser.parse_args(argv)
    breaking = incompatibilities(args.root)
    if args.check:
        stale = stale_files(args.root)
        if stale:
            print(f"stale: {', '.join(stale)}; run `make contracts`")
        if breaking:
            print(explain(breaking))
        return 1 if stale or breaking else 0
    for path, content in generated_files(args.root).items():
        if path.parent == RELEASED and path.name.removesuffix(".json") in breaking:
            continue  # a breaking change is never recorded as released
        target = args.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != content:
            target.write_text(content)
            print(f"wrote {path}")
    if breaking:
        print(explain(breaking))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
