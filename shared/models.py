"""Pydantic models at the HTTP edge: what the API accepts and answers, and what a signed link carries."""

from __future__ import annotations

import re
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Table Storage forbids / \ # ? and control characters in keys; account ids become keys.
_FORBIDDEN_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


def check_account_id(value: str) -> str:
    if not 1 <= len(value) <= 200:
        raise ValueError("account id must be 1 to 200 characters")
    if _FORBIDDEN_KEY_CHARS.search(value):
        raise ValueError("account id must not contain / \\ # ? or control characters")
    if value.strip() != value:
        raise ValueError("account id must not start or end with whitespace")
    return value


def check_email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError("not a valid e-mail address")
    return value


class FormRequest(BaseModel):
    """EmailEngine's ``POST /v1/authentication/form`` body, plus ``expiresIn`` (seconds, capped)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    account: Optional[str] = Field(None, description="Account id; omitted or null: derived from the mailbox")
    name: Optional[str] = Field(None, max_length=256)
    email: Optional[str] = Field(None, description="Mailbox address; required for a delegated (shared) mailbox")
    delegated: bool = Field(False, description="The mailbox is a shared mailbox opened by the signer")
    redirectUrl: str = Field(..., max_length=2048)
    type: Optional[str] = Field(None, max_length=64, description="OAuth app id; optional with one enabled app")
    expectedEmail: Optional[str] = None
    syncFrom: Optional[str] = Field(None, max_length=64)
    notifyFrom: Optional[str] = Field(None, max_length=64)
    subconnections: Optional[list[str]] = Field(None, max_length=50)
    path: Optional[Union[str, list[str]]] = None
    expiresIn: Optional[int] = Field(None, gt=0, description="Link lifetime in seconds (capped by the service)")

    @field_validator("account")
    @classmethod
    def _account(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_account_id(value)

    @field_validator("email", "expectedEmail")
    @classmethod
    def _email(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_email(value)

    @model_validator(mode="after")
    def _delegated_needs_email(self) -> "FormRequest":
        if self.delegated and not self.email:
            raise ValueError("email (the shared mailbox address) is required when delegated is true")
        return self


class FormResponse(BaseModel):
    url: str
    expires: str


class LinkData(BaseModel):
    """Everything a sign-in link carries; signed as a whole, so nothing in it can be changed."""

    model_config = ConfigDict(extra="forbid")

    account: Optional[str] = None
    name: Optional[str] = None
    email: Optional[str] = None
    delegated: bool = False
    redirectUrl: str
    type: str
    expectedEmail: Optional[str] = None
    meta: dict[str, Any] = Field(default_factory=dict)  # syncFrom, notifyFrom, subconnections, path
    loginHint: Optional[str] = None  # set only by re-authentication links; never a shared mailbox
    domainHint: Optional[str] = None
    nonce: str
    iat: int
    exp: int


class ErrorBody(BaseModel):
    error: str
    message: str
    field: Optional[str] = None
