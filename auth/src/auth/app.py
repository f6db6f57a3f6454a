from __future__ import annotations

from fastapi import FastAPI

from auth.routes import router
from auth.service import Passwords
from auth.settings import AuthSettings
from ticketing_common.app import create_service_app


def create_app(settings: AuthSettings) -> FastAPI:
    app = create_service_app(settings, title="Ticketing auth", routers=[router])
    app.state.passwords = Passwords(settings)
    return app
