"""The message catalogs: extract every message from the code and templates, and update the
Dutch catalog with them (``python -m client.messages``; then translate what it lists).
"""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

PACKAGE_DIR = Path(__file__).parent
TEMPLATE_OPTIONS = {"extensions": "jinja2.ext.i18n", "trimmed": "true"}


def catalog_path(language: str) -> Path:
    return PACKAGE_DIR / "locales" / language / "LC_MESSAGES" / "messages.po"


def extract() -> Catalog:
    """Every message the client shows, as the code and the templates have it now."""
    catalog = Catalog(project="ticketing-client", charset="utf-8")
    found = extract_from_dir(
        PACKAGE_DIR,
        method_map=[("**.py", "python"), ("templates/**.html", "jinja2.ext:babel_extract")],
        options_map={"templates/**.html": TEMPLATE_OPTIONS},
    )
    for filename, line, message, comments, context in found:
        catalog.add(message, None, [(filename, line)], auto_comments=comments, context=context)
    return catalog


def read(language: str) -> Catalog:
    with catalog_path(language).open("rb") as source:
        return read_po(source, locale=language)


def untranslated(catalog: Catalog) -> list[str]:
    return [
        str(message.id)
        for message in catalog
        if message.id and (not message.string or message.fuzzy)
    ]


def update(language: str) -> Catalog:
    path = catalog_path(language)
    catalog = read(language) if path.exists() else Catalog(locale=language)
    catalog.update(extract(), no_fuzzy_matching=True, update_creation_date=False)
    catalog.obsolete.clear()
    catalog.project, catalog.version, catalog.fuzzy = "ticketing-client", "", False
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as target:
        write_po(target, catalog, width=100, omit_header=False, sort_output=True)
    return catalog


def main() -> int:
    catalog = update("nl")
    missing = untranslated(catalog)
    for message in missing:
        print(f"untranslated: {message!r}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
