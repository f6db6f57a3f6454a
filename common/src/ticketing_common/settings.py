"""Settings read from the environment, shared by every service.

A service subclasses :class:`ServiceSettings` to add its own fields. A web server that owns no
database and no NATS connection (the web client) subclasses :class:`WebSettings`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import Request

from ticketing_common.database_url import with_driver

# Keys that appear in examples and tutorials; production refuses them.
KNOWN_WEAK_KEYS = frozenset({"secret", "changeme", "changethis", "jwt_key", "asdf", "development"})
MIN_JWT_KEY_LENGTH = 32
# Every secret the cluster's dev overlay generates (infra/k8s/overlays/dev) carries this mark;
# production refuses any setting that does, so a dev value cannot reach it by mistake.
DEV_ONLY_MARK = "dev-only"


def _refuse_dev_only(name: str, value: str | None) -> None:
    if value is not None and DEV_ONLY_MARK in value:
        raise ValueError(f"{name} is a dev-only value from the repository: never in production")


class WebSettings(BaseSettings):
    """What every server of the platform reads: sessions, cookies, logs, proxies."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    service_name: str = "service"
    environment: Literal["development", "test", "production"] = "development"
    # Required everywhere (no default to forget to override); production also refuses weak ones.
    jwt_key: SecretStr
    session_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    # Secure cookies need HTTPS; on by default in the cluster manifests.
    cookie_secure: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_json: bool = True
    # Peers whose X-Forwarded-* headers are believed (addresses or networks): the local edge
    # by default; in the cluster, the pod network where the ingress controller runs.
    forwarded_allow_ips: str = "127.0.0.1"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _refuse_weak_key_in_production(self) -> WebSettings:
        if self.environment == "production":
            key = self.jwt_key.get_secret_value()
            _refuse_dev_only("JWT_KEY", key)
            if key.lower() in KNOWN_WEAK_KEYS or len(key) < MIN_JWT_KEY_LENGTH:
                raise ValueError(
                    f"JWT_KEY must be set to a random secret of at least {MIN_JWT_KEY_LENGTH} "
                    "characters in production (e.g. `openssl rand -hex 32`)"
                )
        return self


class ServiceSettings(WebSettings):
    """A backend service: its own database and the NATS bus."""

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    nats_url: str = "nats://127.0.0.1:4222"
    # The service's own NATS user (see messaging.permissions); required in production.
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    # Event machinery.
    # Copies of the stream JetStream keeps: 1 for a single server, 3 for a 3-node cluster.
    nats_stream_replicas: int = Field(default=1, ge=1, le=5)
    outbox_poll_seconds: float = Field(default=2.0, gt=0)
    consumer_max_deliveries: int = Field(default=8, ge=1)
    consumer_ack_wait_seconds: float = Field(default=30.0, gt=0)
    # A consumer's transactions at once (an event, or a batch of events of different entities:
    # tickets, orders). Each holds a database connection, from the same pool as the requests
    # (``make_engine``'s 20): the default leaves most of it to the requests.
    consumer_concurrency: int = Field(default=8, ge=1, le=256)

    @field_validator("database_url")
    @classmethod
    def _for_sqlalchemy(cls, value: str) -> str:
        return with_driver(value)  # DATABASE_URL may come as postgresql:// (libpq's form)

    @model_validator(mode="after")
    def _require_bus_credentials_in_production(self) -> ServiceSettings:
        if self.environment == "production":
            # An anonymous connection could publish any event; production never makes one.
            if not (self.nats_user and self.nats_password):
                raise ValueError(
                    "NATS_USER and NATS_PASSWORD must both be set in production "
                    "(the service's own NATS user)"
                )
            _refuse_dev_only("NATS_PASSWORD", self.nats_password.get_secret_value())
            _refuse_dev_only("DATABASE_URL", self.database_url)
        if bool(self.nats_user) != bool(self.nats_password):
            raise ValueError("NATS_USER and NATS_PASSWORD are set together or not at all")
        return self


S = TypeVar("S", bound=ServiceSettings)
W = TypeVar("W", bound=WebSettings)


def app_settings(request: Request, settings_cls: type[W]) -> W:
    """The settings the app factory gave the app serving ``request``."""
    settings = request.app.state.settings
    assert isinstance(settings, settings_cls)
    return settings


def settings_dependency(settings_cls: type[W]) -> Callable[[Request], Coroutine[Any, Any, W]]:
    """A FastAPI dependency giving a route its service's settings (set by the app factory)."""

    # async, as every dependency on a request's path: FastAPI runs a plain ``def`` one in a
    # worker thread, a hand-off there and back that costs more than the work.
    async def dependency(request: Request) -> W:
        return app_settings(request, settings_cls)

    return dependency
