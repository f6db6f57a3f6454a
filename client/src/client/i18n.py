"""Two languages, English and Dutch: which one a request gets, its messages and its formats.

The language is the ``lang`` cookie (set by the switch) or else the best match for
``Accept-Language``. Messages live in Babel catalogs (``locales/<lang>/LC_MESSAGES/messages.po``,
English is the source language); they are compiled in memory at start-up, so there is no build
step and no compiled file to forget. Templates and code translate through one context variable
holding the request's translations.
"""

from __future__ import annotations

import io
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from babel import Locale
from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency
from babel.support import NullTranslations, Translations

LANGUAGES = {"en": "English", "nl": "Nederlands"}
DEFAULT_LANGUAGE = "en"
LANGUAGE_COOKIE = "lang"
LOCALES_DIR = Path(__file__).parent / "locales"


def _load(language: str) -> NullTranslations:
    po = LOCALES_DIR / language / "LC_MESSAGES" / "messages.po"
    if not po.exists():
        return NullTranslations()
    with po.open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)


TRANSLATIONS = {language: _load(language) for language in LANGUAGES}
_current: ContextVar[str] = ContextVar("language", default=DEFAULT_LANGUAGE)


def choose_language(cookie: str | None, accept_language: str | None) -> str:
    if cookie in LANGUAGES:
        return cookie
    for tag in _preferred(accept_language or ""):
        base = tag.split("-")[0].lower()
        if base in LANGUAGES:
            return base
    return DEFAULT_LANGUAGE


def _preferred(header: str) -> list[str]:
    """``nl-NL,nl;q=0.9,en;q=0.5`` -> tags by descending quality (malformed parts ignored)."""
    weighted = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and quality > 0:
            weighted.append((-quality, position, tag.strip()))
    return [tag for _, _, tag in sorted(weighted)]


def set_language(language: str) -> None:
    _current.set(language)


def current_language() -> str:
    return _current.get()


def N_(message: str) -> str:  # noqa: N802 (the name the message extractor looks for)
    """Marks a message for the catalog where it is defined; it is translated where shown."""
    return message


def gettext(message: str) -> str:
    return TRANSLATIONS[_current.get()].gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return TRANSLATIONS[_current.get()].ngettext(singular, plural, n)


def _locale() -> Locale:
    return Locale.parse({"en": "en_US", "nl": "nl_NL"}[_current.get()])


def format_price(amount: Decimal, currency: str) -> str:
    return format_currency(amount, currency.upper(), locale=_locale())


def format_time(moment: datetime) -> str:
    """A moment in UTC, said the way the language says it (the page says "UTC")."""
    return format_datetime(moment.astimezone(UTC), "medium", tzinfo=UTC, locale=_locale())
