from __future__ import annotations

import sys

from payments.app import create_app, provider_for
from payments.handlers import make_consumer
from payments.settings import PaymentsSettings
from ticketing_common.cli import service_main


def main() -> int:
    # For `parked replay`: a replayed order.cancelled releases payments like a live one.
    return service_main(
        PaymentsSettings, create_app, consumer_factory=lambda s: make_consumer(provider_for(s))
    )


if __name__ == "__main__":
    sys.exit(main())
