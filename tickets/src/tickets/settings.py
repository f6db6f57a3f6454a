from __future__ import annotations

from ticketing_common.settings import ServiceSettings


class TicketsSettings(ServiceSettings):
    service_name: str = "tickets"
