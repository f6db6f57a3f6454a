"""Sign-up and sign-in: the rules, apart from HTTP.

Sign-up works in the request's unit of work and never commits: the request does; it hashes
before its first statement. Sign-in runs short units of work of its own around the password
check (see ``sign_in``). Neither holds a database connection through a hash.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth.models import SigninFailure, User
from auth.settings import AuthSettings
from ticketing_common.clock import utcnow
from ticketing_common.db import advisory_xact_lock, transaction
from ticketing_common.errors import BadRequestError, TooManyRequestsError

# More than an attempt adds, so stale failures never pile up.
STALE_FAILURES_CLEARED_PER_ATTEMPT = 100


class EmailInUseError(BadRequestError):
    message = "Email in use"
    field = "email"


class InvalidCredentialsError(BadRequestError):
    message = "Invalid credentials"


class Passwords:
    """argon2id hashing, off the event loop (a hash takes tens of milliseconds by design)."""

    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHash(
            (
                Argon2Hasher(
                    time_cost=settings.argon2_time_cost,
                    memory_cost=settings.argon2_memory_cost_kib,
                    parallelism=settings.argon2_parallelism,
                ),
            )
        )
        # Compared against when the email is unknown, so both answers take as long.
        self._dummy_hash = self._hasher.hash("not-a-real-password")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        return (
            await asyncio.to_thread(
                self._hasher.verify, password, password_hash or self._dummy_hash
            )
            and password_hash is not None
        )


async def sign_up(session: AsyncSession, passwords: Passwords, email: str, password: str) -> User:
    # Hashed before the first statement, which is when the session takes a connection: none is
    # held through the hash. (A taken email so costs a hash too, and is not told by speed.)
    password_hash = await passwords.hash(password)
    if await session.scalar(select(User.id).where(User.email == email)) is not None:
        raise EmailInUseError()
    user = User(email=email, password_hash=password_hash)
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:
        # Another sign-up with this email committed between our check and our insert.
        raise EmailInUseError() from exc
    return user


async def sign_in(
    sessionmaker: async_sessionmaker[AsyncSession],
    passwords: Passwords,
    settings: AuthSettings,
    email: str,
    password: str,
    client: str,
) -> User:
    """Throttled by the client's address, never by the email alone: an attacker hammering an
    account locks out only themselves, and the owner signs in from anywhere else.

    Short units of work around the slow hash, so no database connection is held through it
    (many at once would drain the pool): count the attempt (and read the user), verify,
    then forgive the failure if the password is right.
    """
    async with transaction(sessionmaker) as session:
        await _count_attempt(session, settings, email, client)
        user = await session.scalar(select(User).where(User.email == email))
    if not await passwords.verify(password, user.password_hash if user else None) or user is None:
        raise InvalidCredentialsError()  # the attempt stays counted as a failure
    async with transaction(sessionmaker) as session:
        # The password is right: forgive this client's failures on this account, not others.
        await session.execute(
            delete(SigninFailure).where(
                SigninFailure.email == email, SigninFailure.client == client
            )
        )
    return user


async def _count_attempt(
    session: AsyncSession, settings: AuthSettings, email: str, client: str
) -> None:
    """Record the attempt as a failure before the password is checked, or refuse it (429).

    Counted first and forgiven if the password is right, so parallel guesses cannot all pass
    the count before one is recorded. The client's lock (any replica) is held for this short
    transaction only, never through the slow hash.
    """
    await advisory_xact_lock(session, f"signin:{client}")
    now = utcnow()
    window = timedelta(seconds=settings.signin_failure_window_seconds)
    # Failures outside the window no longer count. Clear a batch, anyone's (a client may never
    # come back), skipping rows another attempt holds: no waiting, no deadlock.
    stale = (
        select(SigninFailure.id)
        .where(SigninFailure.failed_at <= now - window)
        .limit(STALE_FAILURES_CLEARED_PER_ATTEMPT)
        .with_for_update(skip_locked=True)
    )
    await session.execute(
        delete(SigninFailure).where(SigninFailure.id.in_(stale.scalar_subquery()))
    )
    for_email = SigninFailure.email == email
    client_failures, client_oldest, email_failures, email_oldest = (
        await session.execute(
            select(
                func.count(),
                func.min(SigninFailure.failed_at),
                func.count().filter(for_email),
                func.min(SigninFailure.failed_at).filter(for_email),
            ).where(SigninFailure.client == client, SigninFailure.failed_at > now - window)
        )
    ).one()
    # While over a limit, the oldest failure it counts is the next to leave the window.
    blocked_until: list[datetime] = [
        oldest + window
        for count, oldest, limit in (
            (client_failures, client_oldest, settings.signin_max_failures_per_client),
            (email_failures, email_oldest, settings.signin_max_failures),
        )
        if count >= limit
    ]
    if blocked_until:
        wait = (max(blocked_until) - now).total_seconds()
        raise TooManyRequestsError(
            "Too many failed sign-in attempts; try again later",
            retry_after=max(1, math.ceil(wait)),
        )
    session.add(SigninFailure(email=email, client=client))
