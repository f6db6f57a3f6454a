from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def service_name() -> str:
    return "auth"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Cheap argon2 in tests only; production keeps the defaults.
    return {
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 64,
        "argon2_parallelism": 1,
        "signin_max_failures": 3,
    }
