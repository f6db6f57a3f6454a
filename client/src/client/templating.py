"""Jinja2 templates (autoescaped, every one) and static files addressed by their content.

A static file's URL carries a digest of its content (``/static/<digest>/style.css``), so it can
be cached for a year: a changed file has a new URL.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from client import i18n
from client.csrf import CSRF_FIELD, csrf_token
from client.i18n import LANGUAGES, format_price, format_time

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
STATIC_DIGESTS = {
    path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    for path in STATIC_DIR.iterdir()
    if path.is_file()
}


def static_url(name: str) -> str:
    return f"/static/{STATIC_DIGESTS[name]}/{name}"


environment = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,  # every template, whatever its name
    undefined=StrictUndefined,
    extensions=["jinja2.ext.i18n"],
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.install_gettext_callables(  # type: ignore[attr-defined]
    i18n.gettext, i18n.ngettext, newstyle=True
)
environment.globals |= {
    "static_url": static_url,
    "format_price": format_price,
    "format_time": format_time,
    "languages": LANGUAGES,
    "csrf_field": CSRF_FIELD,
}


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    page = environment.get_template(template).render(
        request=request,
        user=request.state.user,
        lang=i18n.current_language(),
        nonce=request.state.nonce,
        csrf_token=csrf_token(request),
        currency=request.app.state.settings.currency,
        **context,
    )
    return HTMLResponse(page, status_code=status_code)
