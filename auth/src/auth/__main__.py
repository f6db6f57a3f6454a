from __future__ import annotations

import sys

from auth.app import create_app
from auth.settings import AuthSettings
from ticketing_common.cli import service_main


def main() -> int:
    return service_main(AuthSettings, create_app)


if __name__ == "__main__":
    sys.exit(main())
