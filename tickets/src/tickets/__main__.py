from __future__ import annotations

import sys

from ticketing_common.cli import service_main
from tickets.app import create_app
from tickets.handlers import consumer
from tickets.settings import TicketsSettings


def main() -> int:
    return service_main(TicketsSettings, create_app, consumer_factory=lambda _: consumer)


if __name__ == "__main__":
    sys.exit(main())
