"""Wire models: what the API and the form accept and answer, the error body, and what a signed link carries.

Layer: above ``checks`` (the value rules these models apply) and ``clouds`` (``Cloud`` and ``BaseScopes`` are
defined there, with the endpoints they select); imports nothing else from ``shared``. Each enumeration is one
``Literal``, defined once: the row models of ``shared.storage`` and the functions taking such values use it too.
Requests forbid unknown fields (400 ``unknown_field``). Responses are what handlers serialise (with
``exclude_none``); the OpenAPI document (``shared.web.openapi``) is generated from these same models, so the
two cannot drift apart.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shared.checks import check_account_id, check_email, check_webhook_url, ill_formed_text
from shared.clouds import BaseScopes, Cloud

AccountId = Annotated[str, AfterValidator(check_account_id)]
"""An account id in a body (``checks.account_id_param`` is the same rule for route parameters)."""

AccountState = Literal["connected", "authenticationError"]
# Whether the signer was proven to open the account's mailbox (shared/signin/flow.py, "Who a mailbox belongs to"):
# ok: proven (at sign-in, or later by shared.core.mailbox_access.prove_access); pending: the check could not run
# yet; off: MC_ACCESS_CHECK=off at sign-in; denied: a later check found the signer can no longer open it.
AccessCheck = Literal["ok", "pending", "off", "denied"]
TokenScope = Literal["api", "admin"]
Provider = Literal["outlook"]  # only Microsoft 365 / Outlook
MaskedSecret = Literal["******"]

MASKED_SECRET: Final[MaskedSecret] = "******"
MAX_PAGE_SIZE = 250
DEFAULT_PAGE_SIZE = 20

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
AUTHORITY_PATTERN = rf"^(?:common|organizations|consumers|{_GUID}|{_DOMAIN})$"
CLIENT_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
SCOPE_PATTERN = r"^[!-~]{1,256}$"  # printable ASCII without spaces (a URI or a short name)
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # OAuth app and API token ids in paths
LINK_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"  # a link's id (its nonce) in GET /v1/links/{link}
MAX_TOKEN_APPS = 10  # an app restriction is an OData filter: Table Storage allows 15 comparisons in one
MAX_TOKEN_ACCOUNTS = 100  # an account-restricted listing reads the accounts one by one
MAX_RESTRICTION_CHARS = 30_000  # stored as JSON in one Table property (at most 32K UTF-16 characters)
AppIdItem = Annotated[str, Field(pattern=ID_PATTERN)]



class _WellFormedText(BaseModel):
    """Every string of the input, at any depth and object keys included, is well-formed Unicode text
    (``shared.checks.text_problem``: no unpaired surrogate, no non-character), checked before the fields.

    The base of every request model and of ``LinkData``: JSON can spell a lone surrogate (``"\\ud800"``) that
    UTF-8 cannot encode, and it would otherwise fail later, at a storage write half-way through a sign-in.
    The error (type ``invalid_text``) names the field in its context (``shared.web.http.validation_error``).
    """

    @model_validator(mode="before")
    @classmethod
    def _well_formed_text(cls, data: Any) -> Any:
        found = ill_formed_text(data)
        if found is not None:
            field, problem = found
            raise PydanticCustomError("invalid_text", "{field}: {problem}" if field else "{problem}",
                                      {"field": field, "problem": problem})
        return data


# --- the form (EmailEngine's hosted authentication) and the signed link --------------------------------

class FormRequest(_WellFormedText):
    """EmailEngine's ``POST /v1/authentication/form`` body, plus ``expiresIn`` (seconds, capped)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    account: AccountId | None = Field(None, description="Account id; omitted or null: derived from the mailbox")
    name: str | None = Field(None, max_length=256)
    email: str | None = Field(None, description="Mailbox address; required for a delegated (shared) mailbox")
    delegated: bool = Field(False, description="The mailbox is a shared mailbox opened by the signer")
    redirectUrl: str = Field(..., max_length=2048)
    type: str | None = Field(None, max_length=64, description="OAuth app id; optional with one enabled app")
    expectedEmail: str | None = None
    syncFrom: str | None = Field(None, max_length=64)
    notifyFrom: str | None = Field(None, max_length=64)
    subconnections: list[str] | None = Field(None, max_length=50)
    path: str | list[str] | None = None
    expiresIn: int | None = Field(None, gt=0, description="Link lifetime in seconds (capped by the service)")

    @field_validator("email", "expectedEmail")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else check_email(value)

    @model_validator(mode="after")
    def _delegated_needs_email(self) -> FormRequest:
        if self.delegated and not self.email:
            raise ValueError("email (the shared mailbox address) is required when delegated is true")
        return self


class FormResponse(BaseModel):
    url: str
    expires: str
    link: str = Field(..., description="The link's id: it comes back on the redirect as `link=`; keep it with "
                                       "the user you made the link for and verify the return with "
                                       "`GET /v1/links/{link}`. It cannot be used to open the link.")


class LinkData(_WellFormedText):
    """Everything a sign-in link carries; signed as a whole, so nothing in it can be changed."""

    model_config = ConfigDict(extra="forbid")

    account: str | None = None
    name: str | None = None
    email: str | None = None
    delegated: bool = False
    redirectUrl: str
    type: str
    expectedEmail: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)  # syncFrom, notifyFrom, subconnections, path
    loginHint: str | None = None  # set only by re-authentication links; never a shared mailbox
    domainHint: str | None = None
    nonce: str
    iat: int
    exp: int


class ErrorBody(BaseModel):
    error: str
    message: str
    field: str | None = None


# --- the management API ------------------------------------------------------------------------------

class _Model(BaseModel):
    # Validators are built on a model's first use, not at import: a request builds only the models it uses.
    model_config = ConfigDict(defer_build=True)


class _Request(_Model, _WellFormedText):
    model_config = ConfigDict(extra="forbid")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _api_scope_only() -> list[TokenScope]:
    return ["api"]


# --- API tokens ---------------------------------------------------------------------------------------

class ApiTokenCreate(_Request):
    name: str = Field(..., min_length=1, max_length=128, description="A label, e.g. the app that uses the token")
    scopes: list[TokenScope] = Field(
        default_factory=_api_scope_only, min_length=1, max_length=2,
        description="`api`: forms, accounts, token hand-off. `admin`: OAuth apps and API tokens.",
    )
    apps: list[AppIdItem] | None = Field(
        None, min_length=1, max_length=MAX_TOKEN_APPS,
        description="Restrict the token to these OAuth apps (ids): it sees and acts on their accounts only, and "
                    "creates forms only for them. Only with scope `api`. Left out: every app.",
    )
    accounts: list[AccountId] | None = Field(
        None, min_length=1, max_length=MAX_TOKEN_ACCOUNTS,
        description="Restrict the token to these account ids (with `apps` too: those of them in these apps); its "
                    "forms must name one of them. Only with scope `api`. Left out: every account.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _not_blank(value)

    @field_validator("apps", "accounts")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(json.dumps(value, separators=(",", ":"))) > MAX_RESTRICTION_CHARS:
            raise ValueError(f"at most {MAX_RESTRICTION_CHARS} characters in all; use fewer or shorter ids")
        return None if value is None else list(dict.fromkeys(value))


class ApiTokenInfo(_Model):
    id: str
    name: str
    scopes: list[TokenScope]
    apps: list[str] | None = Field(None, description="Present on a restricted token: the OAuth apps it is limited to")
    accounts: list[str] | None = Field(None, description="Present on a restricted token: the accounts it is limited to")
    created: datetime


class ApiTokenCreated(ApiTokenInfo):
    token: str = Field(..., description="The token itself: shown once, stored only as a SHA-256 hash")


class ApiTokenList(_Model):
    tokens: list[ApiTokenInfo]


class ApiTokenDeleted(_Model):
    id: str
    deleted: bool = True


# --- OAuth apps ---------------------------------------------------------------------------------------

class _AppFields(_Request):
    """Fields shared by create and update; the validators run on both."""

    @field_validator("name", check_fields=False)
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _not_blank(value)

    @field_validator("clientSecret", check_fields=False)
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and (value.strip() != value or not value):
            raise ValueError("must not be empty or start or end with whitespace")
        return value

    @field_validator("authority", check_fields=False)
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not re.match(AUTHORITY_PATTERN, value)):
            raise ValueError("must be common, organizations, consumers, a tenant id (GUID) or a tenant domain")
        return value

    @field_validator("clientId", check_fields=False)
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and not re.match(CLIENT_ID_PATTERN, value):
            raise ValueError("must be the application (client) id: letters, digits, '.', '_' or '-'")
        return value

    @field_validator("extraScopes", check_fields=False)
    @classmethod
    def _scopes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        for scope in value:
            if not re.match(SCOPE_PATTERN, scope):
                raise ValueError(f"{scope!r} is not a scope (printable characters without spaces, at most 256)")
        return list(dict.fromkeys(value))


class OAuthAppCreate(_AppFields):
    provider: Provider = Field("outlook", description="Only Microsoft 365 / Outlook")
    name: str = Field(..., min_length=1, max_length=256)
    clientId: str = Field(..., json_schema_extra={"pattern": CLIENT_ID_PATTERN},
                          description="The Entra application (client) id")
    clientSecret: str = Field(..., max_length=1024, description="Kept in the secret store; never returned")
    authority: str = Field("organizations", json_schema_extra={"pattern": AUTHORITY_PATTERN, "maxLength": 253},
                           description="`common`, `organizations`, `consumers`, a tenant id or a tenant domain")
    cloud: Cloud = "global"
    baseScopes: BaseScopes = Field("imap", description="`imap`: IMAP/SMTP XOAUTH2; `api`: Microsoft Graph")
    extraScopes: list[str] = Field(default_factory=list, max_length=30)
    enabled: bool = True


def _omittable(schema: dict) -> None:
    schema.pop("default", None)  # left out means unchanged; there is no default value


def _partial(**kwargs) -> Any:
    """A field of a partial update: may be left out, but not sent as null."""
    extra = kwargs.pop("json_schema_extra", {})

    def schema_extra(schema: dict) -> None:
        _omittable(schema)
        schema.update(extra)

    return Field(None, json_schema_extra=schema_extra, **kwargs)


class OAuthAppUpdate(_AppFields):
    """Partial update: fields left out keep their value; ``null`` is refused (400) for every field."""

    provider: Provider = _partial()
    name: str = _partial(min_length=1, max_length=256)
    clientId: str = _partial(json_schema_extra={"pattern": CLIENT_ID_PATTERN})
    clientSecret: str = _partial(max_length=1024, description="Rotates the client secret")
    authority: str = _partial(json_schema_extra={"pattern": AUTHORITY_PATTERN, "maxLength": 253})
    cloud: Cloud = _partial()
    baseScopes: BaseScopes = _partial()
    extraScopes: list[str] = _partial(max_length=30)
    enabled: bool = _partial()


class OAuthAppInfo(_Model):
    id: str = Field(..., description="Use it as `type` in `POST /v1/authentication/form`")
    provider: Provider = "outlook"
    name: str
    clientId: str
    clientSecret: MaskedSecret = Field(MASKED_SECRET, description="Always masked")
    authority: str
    cloud: Cloud
    baseScopes: BaseScopes
    extraScopes: list[str]
    enabled: bool
    redirectUrl: str = Field(..., description="The redirect URI to register for this app in Entra")
    created: datetime
    updated: datetime


class OAuthAppList(_Model):
    apps: list[OAuthAppInfo]


class OAuthAppDeleted(_Model):
    id: str
    deleted: bool = True


# --- accounts -----------------------------------------------------------------------------------------

class AccountListQuery(_Request):
    """Query parameters of ``GET /v1/accounts``."""

    pageSize: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(None, max_length=4096, description="`nextCursor` of the previous page")
    state: AccountState | None = None
    email: str | None = Field(None, description="The mailbox address (exact, case-insensitive)")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else check_email(value)


class SignerInfo(_Model):  # who signed in for the account (``shared.signing.Signer`` is the HMAC signer)
    upn: str = Field(..., description="The Microsoft user who signed in (for a shared mailbox: the delegate)")
    tenant: str = Field(..., description="The signer's tenant id (`tid`)")
    name: str | None = None


class AccountError(_Model):
    code: str
    description: str | None = None
    at: datetime | None = None


class AccountInfo(_Model):
    account: str
    name: str | None = None
    email: str = Field(..., description="The mailbox: the signer's own or a shared mailbox")
    delegated: bool = Field(..., description="A shared mailbox opened with the signer's credential")
    signer: SignerInfo
    app: str = Field(..., description="The OAuth app id (`type`)")
    state: AccountState
    lastError: AccountError | None = Field(None, description="Present when state is authenticationError")
    accessCheck: AccessCheck = Field(
        ..., description="`ok`: the signer was proven to open the mailbox; `pending`: the check could not run at "
                         "sign-in and is still to be made (the account works, but cannot move to another signer); "
                         "`off`: not checked (MC_ACCESS_CHECK=off); `denied`: a later check was refused")
    expectedEmail: str | None = Field(
        None, description="The address pinned by the `expectedEmail` of a sign-in: every later sign-in for this "
                          "account must prove it (the mailbox, or the signer's own address)")
    syncFrom: str | None = None
    notifyFrom: str | None = None
    subconnections: list[str] | None = None
    path: str | list[str] | None = None
    created: datetime
    updated: datetime


class AccountList(_Model):
    accounts: list[AccountInfo]
    nextCursor: str | None = Field(..., description="Pass as `cursor` for the next page; null on the last")


class AccountUpdate(_Request):
    name: str | None = Field(..., max_length=256, description="The display name; null clears it")


class AccountDeleted(_Model):
    account: str
    deleted: bool = True


class ReauthRequest(_Request):
    redirectUrl: str = Field(..., max_length=2048, description="Where the browser returns after the sign-in")
    expiresIn: int | None = Field(None, gt=0, description="Link lifetime in seconds (capped by the service)")


# --- verifying the return (GET /v1/links/{link}; implemented in shared/admin/links.py) -----------------------

class LinkStatus(_Model):
    """What a completed sign-in link produced: the answer an app checks the redirect's parameters against."""

    link: str = Field(..., description="The link id (`link` of the form's answer and of the redirect)")
    account: str = Field(..., description="The account this link's sign-in wrote")
    state: Literal["new", "existing"] = Field(..., description="As on the redirect: a new or an existing account")
    completed: bool = Field(True, description="Always true: a link that produced no account answers 404")
    completedAt: datetime | None = Field(None, description="When the sign-in completed (absent if not recorded)")
    app: str | None = Field(None, description="The OAuth app id of the link")


# --- token hand-off (GET /v1/account/{account}/oauth-token; implemented in shared/handoff/tokens.py) ---------------
# The OpenAPI document uses these models; shared.handoff.tokens.TokenHandOff serialises the same shape (a test
# compares the two).

class ImapSettings(_Model):
    host: str
    port: int = 993
    secure: bool = True
    user: str = Field(..., description="XOAUTH2 user: the mailbox address (also for a shared mailbox)")


class SmtpSettings(_Model):
    # ``from`` is a Python keyword: the field is ``from_`` with the alias ``from``; serialise with
    # ``model_dump(by_alias=True)`` (``serialize_by_alias`` makes that the default on pydantic >= 2.11).
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    host: str
    port: int = 587
    secure: bool = False
    starttls: bool = True
    user: str = Field(..., description="XOAUTH2 user: the signer (the delegate for a shared mailbox)")
    from_: str = Field(..., alias="from", description="MAIL FROM: the mailbox address")


class GraphSettings(_Model):
    baseUrl: str = Field(..., description="{graph}/v1.0/me, or {graph}/v1.0/users/{mailbox} for a shared mailbox")


class OAuthTokenResponse(_Model):
    account: str
    user: str = Field(..., description="The mailbox address (EmailEngine's field)")
    accessToken: str
    expires: str = Field(..., json_schema_extra={"format": "date-time"}, description="ISO 8601 UTC expiry")
    scopes: list[str]
    registeredScopes: list[str] = Field(..., description="EmailEngine's name for the same scopes")
    provider: Provider = "outlook"
    tokenType: Literal["Bearer"] = "Bearer"
    delegated: bool
    imap: ImapSettings
    smtp: SmtpSettings
    graph: GraphSettings


class ReauthenticationRequiredBody(_Model):
    """409 of the token hand-off: only a new sign-in (``POST /v1/account/{account}/reauth``) repairs it."""

    error: Literal["reauthentication_required"]
    message: str
    account: str
    state: Literal["authenticationError"]
    errorCode: str
    errorDescription: str


# --- webhooks (scope ``admin``; implemented in shared/webhooks/dispatcher.py) ----------------------------------------

EventType = Literal["accountAdded", "authenticationSuccess", "authenticationError", "accountDeleted",
                    "mailboxAccessLost"]
WebhookSource = Literal["api", "settings"]  # settings: from MC_WEBHOOK_URLS
WEBHOOK_ID_PATTERN = r"^[a-z0-9]{1,40}$"
DEAD_LETTER_ID_PATTERN = r"^[a-z0-9]{1,40}\.[0-9a-f]{28}$"


class WebhookCreate(_Request):
    url: str = Field(..., max_length=2048,
                     description="https URL that receives the events (plain http only for localhost)")
    events: list[EventType] = Field(default_factory=list, max_length=len(get_args(EventType)),
                                    description="The events to send; empty or left out: every event")
    description: str | None = Field(None, max_length=256)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_webhook_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class WebhookInfo(_Model):
    id: str
    url: str
    events: list[EventType] = Field(..., description="Empty: every event")
    description: str | None = None
    source: WebhookSource = Field(..., description="`settings`: from MC_WEBHOOK_URLS (read-only)")
    created: datetime | None = None


class WebhookCreated(WebhookInfo):
    secret: str = Field(..., description="The signing secret (HMAC-SHA256 key): shown once, kept in the secret store")


class WebhookList(_Model):
    webhooks: list[WebhookInfo]


class WebhookDeleted(_Model):
    id: str
    deleted: bool = True


class DeadLetter(_Model):
    id: str = Field(..., description="`<webhook id>.<event id>`")
    webhook: str
    eventId: str
    event: EventType
    account: str
    attempts: int
    created: datetime = Field(..., description="When the event was handed to this webhook")
    lastAttemptAt: datetime | None = None
    lastStatus: int | None = Field(None, description="The receiver's last HTTP status; absent: not reached")
    lastError: str | None = None
    deadAt: datetime | None = None


class DeadLetterList(_Model):
    deadLetters: list[DeadLetter]


class DeadLetterResent(_Model):
    id: str
    status: Literal["pending"] = "pending"
    nextAttemptAt: datetime


class DeadLetterDeleted(_Model):
    id: str
    deleted: bool = True


class WebhookEvent(_Model):
    """What a webhook receives (POST, application/json); see the README for the signature."""

    id: str = Field(..., description="Event id: the same on every retry; dedupe on it")
    serviceUrl: str
    account: str
    date: datetime
    event: EventType
    data: dict[str, Any]
