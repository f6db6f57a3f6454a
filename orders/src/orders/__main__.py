from __future__ import annotations

import sys

from orders.app import create_app
from orders.handlers import consumer
from orders.settings import OrdersSettings
from ticketing_common.cli import service_main


def main() -> int:
    return service_main(OrdersSettings, create_app, consumer_factory=lambda _: consumer)


if __name__ == "__main__":
    sys.exit(main())
