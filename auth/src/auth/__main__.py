from __future__ import annotations

import sys
from pathlib import Path

from auth.app import create_app
from auth.settings import AuthSettings
from ticketing_common.cli import service_main


def main() -> int:
    return service_main(
        settings_factory=AuthSettings,
        app_factory=create_app,
        migrations_dir=Path(__file__).parent / "migrations",
    )


if __name__ == "__main__":
    sys.exit(main())
