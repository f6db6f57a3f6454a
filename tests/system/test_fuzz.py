"""Every service's public API fuzzed through the edge, from its own OpenAPI document.

schemathesis generates requests from each service's document (read from the service itself:
the edge does not serve it) and sends them through the edge as a client would, signed in with
a real session cookie. Every response must be a documented status, in the documented shape,
and never a server error. The examples per operation are bounded to keep this to a few
minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from requests.adapters import HTTPAdapter
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.requests import SameHostRedirectsSession

from ticketing_local.routing import RoutingTable

from .local_platform import LocalPlatform, User

pytestmark = pytest.mark.timeout(600)

EXAMPLES_PER_OPERATION = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SERVICES = sorted({route.service for route in RoutingTable.load().routes} - {"client"})
# The fuzzer is a client of its own (a loopback address of its own, 127.0.0.x): the failed
# sign-ins it sends then throttle only it, never the other tests on the shared platform.
FUZZER_ADDRESS = "127.0.0.31"


class _FromFuzzerAddress(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, source_address=(FUZZER_ADDRESS, 0), **kwargs)


def fuzzer_session() -> requests.Session:
    """The session schemathesis makes for each request by default, sending from the fuzzer's
    own address."""
    session = SameHostRedirectsSession()
    session.mount("http://", _FromFuzzerAddress())
    return session


def call_and_validate(case: Any, base_url: str, headers: dict[str, str]) -> None:
    with fuzzer_session() as session:
        case.call_and_validate(
            base_url=base_url, session=session, headers=headers, checks=CHECKS, timeout=30
        )


@pytest.fixture(scope="module")
def session_cookie(platform: LocalPlatform) -> Iterator[str]:
    user = User(platform).sign_up()
    yield f"session={user.http.cookies['session']}"
    user.http.close()


def public_operations(platform: LocalPlatform, service: str) -> list[Any]:
    """The operations of ``service`` that the edge routes to it (not its own endpoints)."""
    port = platform.status()["processes"][service]["port"]
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
    table = RoutingTable.load()
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    return [
        op
        for op in operations
        if (route := table.match(op.path)) is not None and route.service == service
    ]


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("signed_in", [True, False], ids=["signed-in", "anonymous"])
def test_every_response_is_documented_and_never_a_server_error(
    platform: LocalPlatform, session_cookie: str, service: str, signed_in: bool
) -> None:
    headers = {"Cookie": session_cookie} if signed_in else {}
    operations = public_operations(platform, service)
    assert operations, f"{service} has no public operation"
    failures: list[str] = []
    for operation in operations:
        run = fuzz(operation, lambda case: call_and_validate(case, platform.url, headers))
        try:
            run()
        except (Exception, FailureGroup) as exc:  # one report for all operations, not the first
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def fuzz(operation: Any, call: Callable[[Any], Any]) -> Callable[[], None]:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples every run: a failure here is reproducible
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        call(case)

    return run
