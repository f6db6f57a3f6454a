from __future__ import annotations

from ticketing_common.settings import ServiceSettings


class ExpirationSettings(ServiceSettings):
    service_name: str = "expiration"
