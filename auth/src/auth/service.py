"""Sign-up and sign-in: the rules, apart from HTTP.

Each function works in the request's unit of work and never commits: the request does.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import SigninFailure, User
from auth.settings import AuthSettings
from ticketing_common.clock import utcnow
from ticketing_common.db import advisory_xact_lock
from ticketing_common.errors import BadRequestError, TooManyRequestsError


class EmailInUseError(BadRequestError):
    message = "Email in use"


class InvalidCredentialsError(BadRequestError):
    message = "Invalid credentials"
    keeps_changes = True  # the failure just recorded counts toward the throttle


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
    if await session.scalar(select(User.id).where(User.email == email)) is not None:
        raise EmailInUseError(field="email")
    user = User(email=email, password_hash=await passwords.hash(password))
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:
        # Another sign-up with this email committed between our check and our insert.
        raise EmailInUseError(field="email") from exc
    return user


async def sign_in(
    session: AsyncSession, passwords: Passwords, settings: AuthSettings, email: str, password: str
) -> User:
    # One attempt per email at a time (any replica): the lock is held through the count, the
    # slow verify and the failure insert, so parallel guesses cannot all pass the count
    # before any failure is recorded. Released when the transaction ends.
    await advisory_xact_lock(session, f"signin:{email}")
    window_start = utcnow() - timedelta(seconds=settings.signin_failure_window_seconds)
    # Failures outside the window no longer count; don't let them pile up.
    await session.execute(
        delete(SigninFailure).where(
            SigninFailure.email == email, SigninFailure.failed_at <= window_start
        )
    )
    recent_failures = await session.scalar(
        select(func.count()).select_from(SigninFailure).where(SigninFailure.email == email)
    )
    if (recent_failures or 0) >= settings.signin_max_failures:
        raise TooManyRequestsError(
            "Too many failed sign-in attempts; try again later",
            retry_after=settings.signin_failure_window_seconds,
        )
    user = await session.scalar(select(User).where(User.email == email))
    if not await passwords.verify(password, user.password_hash if user else None) or user is None:
        session.add(SigninFailure(email=email))
        raise InvalidCredentialsError()
    await session.execute(delete(SigninFailure).where(SigninFailure.email == email))
    return user
