"""Fixtures of the system tests; what they use lives in ``local_platform.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .local_platform import LocalPlatform, User, running_platform


@pytest.fixture(scope="module")
def platform_env() -> dict[str, str]:
    """The platform's settings; a module that needs others overrides this fixture."""
    return {"ORDER_EXPIRATION_SECONDS": "60"}


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, platform_env: dict[str, str]
) -> Iterator[LocalPlatform]:
    # tmp_path_factory's folders are private (0700): as root this also exercises PostgreSQL's
    # data moving somewhere its unprivileged user can reach.
    with running_platform(tmp_path_factory.mktemp("local-mode"), **platform_env) as platform:
        yield platform


@pytest.fixture
def new_user(platform: LocalPlatform) -> Iterator[Callable[[], User]]:
    """Makes signed-up users, each with its own cookie jar; closes their clients after."""
    users: list[User] = []

    def make() -> User:
        users.append(User(platform).sign_up())
        return users[-1]

    yield make
    for user in users:
        user.http.close()
