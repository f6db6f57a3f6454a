from __future__ import annotations

import uuid

from pydantic import EmailStr, Field, field_validator

from ticketing_common.models import CamelModel


class _EmailModel(CamelModel):
    email: EmailStr = Field(max_length=320)

    @field_validator("email")
    @classmethod
    def _normalise(cls, email: str) -> str:
        return email.strip().lower()


class Credentials(_EmailModel):
    password: str = Field(min_length=8, max_length=128)


class SigninCredentials(_EmailModel):
    # No length rule: a wrong password of any length is just "Invalid credentials".
    password: str = Field(min_length=1, max_length=1024)


class UserOut(CamelModel):
    id: uuid.UUID
    email: str


class CurrentUserOut(CamelModel):
    current_user: UserOut | None
