from __future__ import annotations

import sys

from client.app import create_app
from client.settings import ClientSettings
from ticketing_common.cli import web_main


def main() -> int:
    return web_main(settings_factory=ClientSettings, app_factory=create_app)


if __name__ == "__main__":
    sys.exit(main())
