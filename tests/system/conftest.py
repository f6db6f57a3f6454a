"""Fixtures of the system tests; what they use lives in ``local_platform.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .local_platform import SHARED_EXPIRATION_SECONDS, LocalPlatform, User, running_platform


@pytest.fixture(scope="session")
def shared_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    """One platform for every module that only uses it: starting one takes half a minute.

    Its tests never stop, kill or restart a process of it, and each works with users and tickets
    of its own, so none sees another's state whatever the order they run in.
    """
    # tmp_path_factory's folders are private (0700): as root this also exercises PostgreSQL's
    # data moving somewhere its unprivileged user can reach.
    env = {"ORDER_EXPIRATION_SECONDS": str(SHARED_EXPIRATION_SECONDS)}
    with running_platform(tmp_path_factory.mktemp("local-mode"), **env) as platform:
        yield platform


@pytest.fixture(scope="module")
def platform_env() -> dict[str, str] | None:
    """``None``: the module runs on the shared platform. A module that stops, kills or restarts
    processes, or needs other settings, overrides this with its settings and gets its own."""
    return None


@pytest.fixture(scope="module")
def platform(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    platform_env: dict[str, str] | None,
) -> Iterator[LocalPlatform]:
    if platform_env is None:
        shared: LocalPlatform = request.getfixturevalue("shared_platform")
        yield shared
        return
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
