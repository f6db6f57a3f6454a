from __future__ import annotations

from pydantic import Field

from ticketing_common.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    service_name: str = "auth"
    # argon2id cost; the defaults are OWASP's, tests lower them to stay fast.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    # Sign-in throttling, by the client's address: this many failures for one email from one
    # client within the window give that client 429 for that email (its owner, elsewhere, still
    # gets in); this many from one client across emails (password spraying) give it 429 for all.
    signin_max_failures: int = Field(default=5, ge=1)
    signin_max_failures_per_client: int = Field(default=20, ge=1)
    signin_failure_window_seconds: int = Field(default=15 * 60, ge=1)
