from __future__ import annotations

import sys
from pathlib import Path

from payments.app import create_app, provider_for
from payments.handlers import make_consumer
from payments.settings import PaymentsSettings
from ticketing_common.cli import service_main


def main() -> int:
    return service_main(
        settings_factory=PaymentsSettings,
        app_factory=create_app,
        migrations_dir=Path(__file__).parent / "migrations",
        # For `parked replay`: a replayed order.cancelled releases payments like a live one.
        consumer_factory=lambda settings: make_consumer(provider_for(settings)),
    )


if __name__ == "__main__":
    sys.exit(main())
