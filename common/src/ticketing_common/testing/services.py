"""The services under test, found by name: each is a package ``<name>`` with ``settings.py``
(``<Name>Settings``), ``app.py`` (``create_app``) and ``migrations/``."""

from __future__ import annotations

import importlib
from pathlib import Path

from fastapi import FastAPI

from ticketing_common.settings import ServiceSettings

SERVICES = ("auth", "tickets", "orders", "expiration", "payments")


def settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{name}.settings")
    cls: type[ServiceSettings] = getattr(module, f"{name.capitalize()}Settings")
    return cls


def migrations_dir(name: str) -> Path:
    package_file = importlib.import_module(name).__file__
    assert package_file is not None
    return Path(package_file).parent / "migrations"


def create_app(name: str, settings: ServiceSettings) -> FastAPI:
    app: FastAPI = importlib.import_module(f"{name}.app").create_app(settings)
    return app
