from __future__ import annotations

import sys

from expiration.app import create_app
from expiration.handlers import consumer
from expiration.settings import ExpirationSettings
from ticketing_common.cli import service_main


def main() -> int:
    return service_main(ExpirationSettings, create_app, consumer_factory=lambda _: consumer)


if __name__ == "__main__":
    sys.exit(main())
