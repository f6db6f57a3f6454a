"""Settings read from the environment, shared by every service.

A service subclasses :class:`ServiceSettings` to add its own fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Keys that appear in examples and tutorials; production refuses them.
KNOWN_WEAK_KEYS = frozenset({"secret", "changeme", "changethis", "jwt_key", "asdf", "development"})
MIN_JWT_KEY_LENGTH = 32
DEVELOPMENT_JWT_KEY = "development-only-key-never-use-in-production"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    service_name: str = "service"
    environment: Literal["development", "test", "production"] = "development"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    nats_url: str = "nats://127.0.0.1:4222"
    jwt_key: SecretStr = SecretStr(DEVELOPMENT_JWT_KEY)
    session_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    # Secure cookies need HTTPS; on by default in the cluster manifests.
    cookie_secure: bool = False
    log_level: str = "INFO"
    log_json: bool = True
    # Event machinery.
    # Copies of the stream JetStream keeps: 1 for a single server, 3 for a 3-node cluster.
    nats_stream_replicas: int = Field(default=1, ge=1, le=5)
    outbox_poll_seconds: float = Field(default=2.0, gt=0)
    consumer_max_deliveries: int = Field(default=8, ge=1)
    consumer_ack_wait_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _refuse_weak_key_in_production(self) -> ServiceSettings:
        if self.environment == "production":
            key = self.jwt_key.get_secret_value()
            if (
                key == DEVELOPMENT_JWT_KEY
                or key.lower() in KNOWN_WEAK_KEYS
                or len(key) < MIN_JWT_KEY_LENGTH
            ):
                raise ValueError(
                    f"JWT_KEY must be set to a random secret of at least {MIN_JWT_KEY_LENGTH} "
                    "characters in production (e.g. `openssl rand -hex 32`)"
                )
        return self

    @property
    def sync_database_url(self) -> str:
        """The URL with the driver Alembic's offline mode and psql-style tools expect."""
        return self.database_url.replace("+asyncpg", "")
