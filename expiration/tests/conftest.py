from __future__ import annotations

import pytest


@pytest.fixture
def service_name() -> str:
    return "expiration"
