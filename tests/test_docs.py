"""The docs stay inside the repository and true to the code.

Every relative link in a committed Markdown file leads to a committed file (and to a heading
there, if it names one) without leaving the repository; the hand-written sequence diagrams and
the spec's service table agree with the event catalog, and its event table with the models.
(The generated parts are checked by ``common/tests/test_contracts.py``.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ticketing_common.events import EVENT_TYPES, Subject
from ticketing_common.events.catalog import CATALOG, publisher_of

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def committed_files() -> set[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {ROOT / name for name in listed.split("\0") if name}


def anchor(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's) gives a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def prose(markdown: str) -> str:
    """The text outside code, where a link is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def broken_links(document: Path, root: Path, files: set[Path]) -> list[str]:
    folders = {parent for path in files for parent in path.parents}
    broken = []
    for match in LINK.finditer(prose(document.read_text())):
        link = match[1] or match[2]
        if EXTERNAL.match(link):
            continue
        target, _, fragment = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        if not path.is_relative_to(root):
            broken.append(f"{link}: leaves the repository")
        elif path not in files and path not in folders:
            broken.append(f"{link}: no such file in the repository")
        elif fragment and path.suffix == ".md":
            anchors = {anchor(h) for h in HEADING.findall(prose(path.read_text()))}
            if fragment not in anchors:
                broken.append(f"{link}: no heading #{fragment} in {path.name}")
    return broken


def test_every_relative_link_leads_to_a_committed_file() -> None:
    files = committed_files()
    documents = sorted(path for path in files if path.suffix == ".md" and path.exists())
    assert ROOT / "README.md" in documents and DOCS / "spec.md" in documents
    broken = {
        str(document.relative_to(ROOT)): links
        for document in documents
        if (links := broken_links(document, ROOT, files))
    }
    assert broken == {}


def test_the_link_check_catches_what_it_should(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "guide.md").write_text("# A guide\n\n## Parked events\n")
    readme = repo / "README.md"
    readme.write_text(
        "See [the spec](../shared/SPEC.md), [gone](docs/gone.md), [ok](docs/guide.md), "
        "[section](docs/guide.md#parked-events), [no section](docs/guide.md#replay), "
        "[site](https://example.com/x), and `[code](../not-a-link)`.\n"
        "```\n[fenced](../not-a-link-either)\n```\n"
    )
    files = {readme, repo / "docs" / "guide.md"}
    assert broken_links(readme, repo.resolve(), {f.resolve() for f in files}) == [
        "../shared/SPEC.md: leaves the repository",
        "docs/gone.md: no such file in the repository",
        "docs/guide.md#replay: no heading #replay in guide.md",
    ]


def test_readme_points_at_the_docs_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/spec.md)" in readme
    assert "shared/SPEC.md" not in readme


# -- the sequence diagrams -----------------------------------------------------------------

MERMAID = re.compile(r"^```mermaid\n(.*?)^```", re.DOTALL | re.MULTILINE)
# `A->>B: text` and `A-->>B: text` (a reply); participants are named by their ids.
ARROW = re.compile(r"^\s*(\w+)\s*--?>>[+-]?\s*(\w+)\s*:\s*(.*)$", re.MULTILINE)
NAMED_SUBJECT = re.compile(r"^([a-z]+\.[a-z]+)\b")
BUS = "NATS"


def sequence_diagrams() -> list[str]:
    diagrams = MERMAID.findall((DOCS / "architecture.md").read_text())
    return [d for d in diagrams if d.lstrip().startswith("sequenceDiagram")]


def wrong_arrows(diagram: str) -> list[str]:
    """Arrows to or from NATS that the catalog contradicts; each names its subject first."""
    wrong = []
    for sender, receiver, text in ARROW.findall(diagram):
        if BUS not in (sender, receiver):
            continue
        named = NAMED_SUBJECT.match(text)
        if named is None or named[1] not in {s.value for s in Subject}:
            wrong.append(f"{sender}->>{receiver}: {text!r} names no subject")
        elif receiver == BUS and sender != publisher_of(Subject(named[1])):
            wrong.append(f"{sender} does not publish {named[1]}")
        elif sender == BUS and Subject(named[1]) not in CATALOG[receiver].consumes:
            wrong.append(f"{receiver} does not consume {named[1]}")
    return wrong


def test_the_sequence_diagrams_agree_with_the_catalog() -> None:
    diagrams = sequence_diagrams()
    assert len(diagrams) == 2, "the purchase and the expiry"
    assert [w for d in diagrams for w in wrong_arrows(d)] == []
    named = {
        m[1]
        for d in diagrams
        for _, _, text in ARROW.findall(d)
        if (m := NAMED_SUBJECT.match(text))
    }
    assert named == {subject.value for subject in Subject}, "every subject appears"


@pytest.mark.parametrize(
    ("arrow", "complaint"),
    [
        ("tickets->>NATS: order.created", "tickets does not publish order.created"),
        ("NATS->>payments: ticket.created", "payments does not consume ticket.created"),
        ("orders->>NATS: order.shipped", "names no subject"),
    ],
)
def test_the_diagram_check_catches_a_wrong_arrow(arrow: str, complaint: str) -> None:
    (wrong,) = wrong_arrows(f"sequenceDiagram\n    {arrow}\n")
    assert complaint in wrong


def test_the_spec_service_table_agrees_with_the_catalog() -> None:
    rows = re.findall(
        r"^\| (\w+) \| [^|]+ \| ([^|]+) \| ([^|]+) \|$", (DOCS / "spec.md").read_text(), re.M
    )
    table = {
        service: (subjects(publishes), subjects(consumes))
        for service, publishes, consumes in rows
        if service in CATALOG
    }
    assert table == {
        service: ({s.value for s in events.publishes}, {s.value for s in events.consumes})
        for service, events in CATALOG.items()
    }


def subjects(cell: str) -> set[str]:
    return set(re.findall(r"[a-z]+\.[a-z]+", cell))


def test_the_spec_event_table_names_every_field_of_every_event() -> None:
    rows = re.findall(r"^\| ([a-z]+\.[a-z]+) \| ([^|]+) \|$", (DOCS / "spec.md").read_text(), re.M)
    # "id, orderId (or null), ticket {id, price}": the top-level names.
    listed = {
        subject: {name.strip() for name in re.sub(r"\{[^}]*\}|\([^)]*\)", "", cell).split(",")}
        for subject, cell in rows
    }
    assert listed == {
        subject.value: set(model.model_json_schema(by_alias=True)["properties"])
        for subject, model in EVENT_TYPES.items()
    }
