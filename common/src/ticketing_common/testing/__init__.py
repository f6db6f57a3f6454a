"""Test helpers every service reuses; the fixtures live in ``testing.plugin`` (a pytest plugin
registered by this package, so ``cd <service> && pytest`` and a root ``pytest`` both get them).

Beside ``helpers``: ``services`` (a service found by name), ``platform`` (several services in
one process) and ``stand_ins`` (the services a test does not run).
"""

from ticketing_common.testing.helpers import (
    EventProbe,
    ServiceHarness,
    TestDatabase,
    Users,
    eventually,
    send_event,
    session_cookie,
    test_settings,
)

__all__ = [
    "EventProbe",
    "ServiceHarness",
    "TestDatabase",
    "Users",
    "eventually",
    "send_event",
    "session_cookie",
    "test_settings",
]
