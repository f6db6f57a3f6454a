"""Every outbound HTTP client in project code is built by ``ticketing_common.http.outbound_client``.

A client that serves many people in turn must never keep a cookie jar (it would hand one
person's session to the next request); ``outbound_client`` is the one place that makes sure.
The one client a library builds, the Stripe SDK's, is given the same jar (the payments tests
show Stripe's cookies are never sent back).
Tests build their own clients (each plays one user, whose cookies it should keep).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
THE_ONE_PLACE = ROOT / "common" / "src" / "ticketing_common" / "http.py"
HTTPX_CLIENTS = {"Client", "AsyncClient"}


def project_sources() -> list[Path]:
    """Python files that ship or run as project code: not tests, not the test plugin."""
    skipped = {".venv", ".tools", "tests", "testing", "migrations", "node_modules"}
    return [
        path
        for path in ROOT.rglob("*.py")
        if not skipped & set(path.relative_to(ROOT).parts) and path != THE_ONE_PLACE
    ]


def direct_httpx_clients(source: str) -> list[int]:
    """Lines that build an httpx client directly (``httpx.AsyncClient(...)``, or imported)."""
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "httpx"
        for alias in node.names
        if alias.name in HTTPX_CLIENTS
    }
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        by_attribute = (
            isinstance(func, ast.Attribute)
            and func.attr in HTTPX_CLIENTS
            and isinstance(func.value, ast.Name)
            and func.value.id == "httpx"
        )
        if by_attribute or (isinstance(func, ast.Name) and func.id in imported):
            lines.append(node.lineno)
    return lines


def test_no_project_module_builds_an_httpx_client_itself() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in project_sources()
        for line in direct_httpx_clients(path.read_text())
    ]
    assert offenders == [], "use ticketing_common.http.outbound_client instead"


def test_the_check_finds_every_spelling() -> None:
    source = """
import httpx
from httpx import AsyncClient as Browser, Client
a = httpx.AsyncClient(timeout=1)
b = httpx.Client()
c = Browser()
d = Client()
e = httpx.Timeout(1)
"""
    assert direct_httpx_clients(source) == [4, 5, 6, 7]
