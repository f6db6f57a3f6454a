"""The services under test, found by name: each is a package ``<name>`` with ``settings.py``
(``<Name>Settings``), ``app.py`` (``create_app``) and ``migrations/``."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from ticketing_common.settings import ServiceSettings

SERVICES = ("auth", "tickets", "orders", "expiration", "payments")


def settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{name}.settings")
    cls: type[ServiceSettings] = getattr(module, f"{name.capitalize()}Settings")
    return cls


def create_app(name: str, settings: ServiceSettings) -> FastAPI:
    app: FastAPI = importlib.import_module(f"{name}.app").create_app(settings)
    return app
