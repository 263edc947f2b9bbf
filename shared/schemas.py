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

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
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
MAX_PAGE_SIZE = 1000  # EmailEngine's bound of pageSize
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

_JS_TRIM = re.compile(r"^[\s\ufeff]+|[\s\ufeff]+$")  # what JavaScript's trim() (EmailEngine's Joi) removes
SubconnectionPath = Annotated[str, Field(min_length=1, max_length=256)]
FolderPath = Annotated[str, Field(min_length=1, max_length=1024)]


def _one_or_many(item: dict[str, Any], max_items: int | None = None) -> dict[str, Any]:
    """The JSON schema of EmailEngine's ``Joi.array().items(...).single()``: one string or an array of them."""
    array: dict[str, Any] = {"type": "array", "items": {"type": "string", **item}}
    if max_items is not None:
        array["maxItems"] = max_items
    return {"anyOf": [{"type": "string", **item}, array, {"type": "null"}]}


def iso_date(value: str) -> str:
    """An ISO 8601 date (``2024-01-31``) or date-time (``2024-01-31T08:00:00Z``, with or without seconds,
    fraction or offset), unchanged; a ``ValueError`` otherwise. EmailEngine's ``Joi.date().iso()``."""
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date (2024-01-31) or date-time (2024-01-31T08:00:00Z)") from None
    return value


class _MailboxSettingsRules(BaseModel):
    """How the form and the account bodies read EmailEngine's values (one home for both): ``account`` trimmed
    as JavaScript trims (blank: absent), a blank ``email``/``expectedEmail`` is absent, one string for
    ``subconnections``/``path`` is a one-element array, ``path`` ``*`` (every folder, the default) is not
    kept, ``syncFrom``/``notifyFrom`` are ISO dates or date-times. Rules for fields a body lacks do nothing."""

    @field_validator("account", mode="before", check_fields=False)
    @classmethod
    def _trimmed_account(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _JS_TRIM.sub("", value) or None
        return value

    @field_validator("email", "expectedEmail", mode="before", check_fields=False)
    @classmethod
    def _blank_email(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("subconnections", "path", mode="before", check_fields=False)
    @classmethod
    def _one_string_is_an_array(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("path", check_fields=False)
    @classmethod
    def _all_folders(cls, value: list[str] | None) -> list[str] | None:
        return None if value is not None and "*" in value else value

    @field_validator("syncFrom", "notifyFrom", check_fields=False)
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        return None if value is None else iso_date(value)


class FormRequest(_WellFormedText, _MailboxSettingsRules):
    """EmailEngine's ``POST /v1/authentication/form`` body, plus ``expiresIn`` (seconds, capped).

    Read as EmailEngine reads it (its Joi schema): an empty string is the same as leaving the field out for
    ``account`` (blank too, after trimming), ``name``, ``email``, ``expectedEmail``, ``delegated``, ``type``,
    ``syncFrom``, ``notifyFrom`` and ``path``; ``account`` is trimmed, then the account-id rules apply;
    ``type: false`` is no preselection; ``subconnections`` and ``path`` take one string as a one-element array
    (and a ``path`` naming ``*``, all folders, is EmailEngine's default: not kept); ``syncFrom``/``notifyFrom``
    must be ISO 8601 dates or date-times (kept as sent).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    account: AccountId | None = Field(None, description="Account id (trimmed; at most 256 UTF-16 code units, "
                                                        "no / \\ # ? or control characters); omitted, null or "
                                                        "empty: derived from the mailbox")
    name: str | None = Field(None, max_length=256)
    email: str | None = Field(None, description="Mailbox address; required for a delegated (shared) mailbox")
    delegated: bool = Field(False, description="The mailbox is a shared mailbox opened by the signer")
    redirectUrl: str = Field(..., max_length=2048)
    type: str | None = Field(
        None, max_length=64,
        description="OAuth app id. `false`, null or left out: no preselection (the only enabled app, or a page "
                    "where the person picks one of the enabled apps when there are several)",
        json_schema_extra={"anyOf": [{"type": "string", "maxLength": 64}, {"const": False}, {"type": "null"}]})
    expectedEmail: str | None = None
    syncFrom: str | None = Field(None, max_length=64, description="ISO 8601 date or date-time")
    notifyFrom: str | None = Field(None, max_length=64, description="ISO 8601 date or date-time")
    subconnections: list[SubconnectionPath] | None = Field(
        None, max_length=50, description="Folder paths; one string is a one-element array",
        json_schema_extra=_one_or_many({"minLength": 1, "maxLength": 256}, 50))
    path: list[FolderPath] | None = Field(
        None, description="Folder paths to watch; one string is a one-element array; `*` (all folders, the "
                          "default) is not kept", json_schema_extra=_one_or_many({"minLength": 1, "maxLength": 1024}))
    expiresIn: int | None = Field(None, gt=0, description="Link lifetime in seconds (capped by the service)")

    @field_validator("name", "delegated", "syncFrom", "notifyFrom", "path", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any, info: ValidationInfo) -> Any:
        if value == "":
            return False if info.field_name == "delegated" else None
        return value

    @field_validator("type", mode="before")
    @classmethod
    def _no_preselection(cls, value: Any) -> Any:
        if value is False or value == "":
            return None
        if isinstance(value, bool):
            raise ValueError("must be an OAuth app id, or false for no preselection")
        return value


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
    type: str | None = None  # the OAuth app; None: the person picks one at /accounts/new (shared.signin.flow)
    apps: list[str] | None = None  # with type None: the apps the pick is limited to (a restricted API token's)
    expectedEmail: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)  # syncFrom, notifyFrom, subconnections, path
    loginHint: str | None = None  # set only by re-authentication links; never a shared mailbox
    domainHint: str | None = None
    nonce: str
    iat: int
    exp: int


class FieldError(BaseModel):
    message: str
    key: str = Field(..., description="The invalid field (dotted path for nested ones)")


class ErrorBody(BaseModel):
    """EmailEngine's error envelope, plus ``field`` (the first invalid field)."""

    statusCode: int
    error: str = Field(..., description="The HTTP reason phrase of statusCode")
    message: str
    code: str = Field(..., description="Machine-readable: unknown_field, not_found, OauthRenewError, ...")
    field: str | None = None
    fields: list[FieldError] | None = Field(None, description="On 400: every invalid field")


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

    account: AccountId | None = Field(
        None, description="EmailEngine's spelling of a one-account restriction: the same as `accounts: [id]`")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _not_blank(value)

    @model_validator(mode="after")
    def _one_account(self) -> ApiTokenCreate:
        if self.account is not None:
            if self.accounts is not None and self.accounts != [self.account]:
                raise ValueError("give either account or accounts")
            self.accounts, self.account = [self.account], None
        return self

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

# Every state EmailEngine's listing filter accepts. This service's accounts are only ever ``connected`` or
# ``authenticationError`` (``AccountState``); a filter on another of EmailEngine's states lists nothing.
AccountStateFilter = Literal["init", "unset", "connected", "connecting", "syncing", "authenticationError",
                             "connectError", "disconnected", "paused"]
AccountType = Literal["outlook", "delegated"]  # EmailEngine's account types that this service produces
MAX_LIST_PAGE = 1024 * 1024  # EmailEngine's own bound of `page`; the scan bound is shared.admin.accounts.MAX_SCAN


class AccountListQuery(_Request):
    """Query parameters of ``GET /v1/accounts``: EmailEngine's (``page``, ``pageSize``, ``state``, ``query``) and
    this service's (``cursor``, ``email``). Without ``cursor`` the answer is a page (``page``, default 0) with
    ``total`` and ``pages``; with ``cursor`` it continues a listing from ``nextCursor`` (no count)."""

    page: int | None = Field(None, ge=0, le=MAX_LIST_PAGE,
                             description="0-based page number (EmailEngine's paging); not with `cursor`")
    pageSize: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(None, max_length=4096, description="`nextCursor` of the previous answer")
    state: AccountStateFilter | None = Field(None, description="Only accounts in this state")
    query: str | None = Field(None, min_length=1, max_length=256,
                              description="Only accounts whose id, name or mailbox address contains this text "
                                          "(case-insensitive)")
    email: str | None = Field(None, description="The mailbox address (exact, case-insensitive)")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else check_email(value)

    @model_validator(mode="after")
    def _one_way_of_paging(self) -> AccountListQuery:
        if self.page is not None and self.cursor is not None:
            raise ValueError("page: give either page (a numbered page) or cursor (continue a listing), not both")
        return self


class SignerInfo(_Model):  # who signed in for the account (``shared.signing.Signer`` is the HMAC signer)
    upn: str = Field(..., description="The Microsoft user who signed in (for a shared mailbox: the delegate)")
    tenant: str = Field(..., description="The signer's tenant id (`tid`)")
    name: str | None = None


class AccountError(_Model):
    """EmailEngine's ``lastError`` (``response``, ``description``, ``serverResponseCode``) and this service's
    ``code`` (Microsoft's OAuth error, e.g. ``invalid_grant``) and ``at``."""

    response: str = Field(..., description="What failed, in words")
    description: str | None = Field(None, description="Microsoft's description of the error")
    serverResponseCode: str = Field(..., description="`OauthRenewError`: the stored sign-in no longer renews")
    code: str = Field(..., description="Microsoft's OAuth error (invalid_grant, interaction_required, ...) or "
                                       "credential_missing")
    at: datetime | None = None


class AccountAuth(_Model):
    user: str = Field(..., description="The authenticating principal: the signer's UPN (for a shared mailbox, "
                                       "the delegate)")
    delegatedUser: str | None = Field(None, description="The shared mailbox, for a delegated account")
    delegatedAccount: str | None = Field(
        None, description="The account whose sign-in this one was created with (`POST /v1/account`)")


class AccountOAuth2(_Model):
    provider: str = Field(..., description="The OAuth app id")
    auth: AccountAuth


class AccountInfo(_Model):
    account: str
    type: AccountType = Field(..., description="`outlook`; `delegated` for an account created with "
                                               "`POST /v1/account` and `oauth2.auth.delegatedAccount` without "
                                               "`oauth2.provider` (as EmailEngine types such accounts)")
    name: str | None = None
    email: str = Field(..., description="The mailbox: the signer's own or a shared mailbox")
    delegated: bool = Field(..., description="A shared mailbox opened with the signer's credential")
    signer: SignerInfo
    app: str = Field(..., description="The OAuth app id (`type` of the form)")
    state: AccountState
    lastError: AccountError | None = Field(None, description="Set when state is authenticationError, else null")
    oauth2: AccountOAuth2
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
    locale: str | None = None
    tz: str | None = None
    created: datetime
    updated: datetime


class AccountList(_Model):
    total: int | None = Field(None, description="How many accounts match (numbered pages only)")
    page: int | None = Field(None, description="This page's number, 0-based (numbered pages only)")
    pages: int | None = Field(None, description="How many pages of `pageSize` there are (numbered pages only)")
    accounts: list[AccountInfo]
    nextCursor: str | None = Field(..., description="Pass as `cursor` for the next accounts; null at the end")


class _AccountSettings(_Request, _MailboxSettingsRules):
    """The account settings of EmailEngine's account bodies that this service keeps (``name``, ``syncFrom``,
    ``notifyFrom``, ``subconnections``, ``path``, ``locale``, ``tz``: read as the form reads them), and those it
    accepts but ignores because they configure EmailEngine's own IMAP sync, which this service does not run
    (``copy``, ``logs``, ``proxy``, ``smtpEhloName``, ``imapIndexer``). Any other field is a 400."""

    name: str | None = Field(None, max_length=256)
    syncFrom: str | None = Field(None, max_length=64, description="ISO 8601 date or date-time")
    notifyFrom: str | None = Field(None, max_length=64, description="ISO 8601 date or date-time")
    subconnections: list[SubconnectionPath] | None = Field(
        None, max_length=50, description="Folder paths; one string is a one-element array",
        json_schema_extra=_one_or_many({"minLength": 1, "maxLength": 256}, 50))
    path: list[FolderPath] | None = Field(
        None, description="Folder paths to watch; one string is a one-element array; `*` (all folders, the "
                          "default) is not kept", json_schema_extra=_one_or_many({"minLength": 1, "maxLength": 1024}))
    locale: str | None = Field(None, max_length=100)
    tz: str | None = Field(None, max_length=100)
    copy_: bool | None = Field(None, alias="copy", description="Ignored (EmailEngine's IMAP sync setting)")
    logs: bool | None = Field(None, description="Ignored (EmailEngine's IMAP sync setting)")
    proxy: str | None = Field(None, max_length=2048, description="Ignored (EmailEngine's IMAP sync setting)")
    smtpEhloName: str | None = Field(None, max_length=256, description="Ignored (EmailEngine's IMAP sync setting)")
    imapIndexer: str | None = Field(None, max_length=64, description="Ignored (EmailEngine's IMAP sync setting)")

    @field_validator("syncFrom", "notifyFrom", "path", "locale", "tz", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return None if value == "" else value



ACCOUNT_SETTINGS: Final = ("syncFrom", "notifyFrom", "subconnections", "path", "locale", "tz")  # kept in meta
IGNORED_SETTINGS: Final = ("copy", "logs", "proxy", "smtpEhloName", "imapIndexer")


class AccountUpdate(_AccountSettings):
    """``PUT /v1/account/{account}``: the settings of ``_AccountSettings``; a field set to null clears it. The
    mailbox (``email``, ``expectedEmail``) and the credentials (``imap``, ``smtp``, ``oauth2``) come from a
    sign-in and cannot be set here; ``webhooks``/``webhooksCustomHeaders`` (EmailEngine's per-account webhooks)
    are not supported: both are 400s."""

    model_config = ConfigDict(populate_by_name=True)

    name: str | None = Field(None, max_length=256, description="The display name; null clears it")

    @model_validator(mode="after")
    def _something(self) -> AccountUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to update: send name or another account setting")
        return self


class DelegatedAuth(_Request):
    user: str | None = Field(None, max_length=256, description="The principal: if given, the signer of "
                                                              "`delegatedAccount` (its UPN)")
    delegatedUser: str = Field(..., description="The shared mailbox to connect")
    delegatedAccount: AccountId = Field(..., description="An existing account whose sign-in (credential) is used")

    @field_validator("delegatedUser")
    @classmethod
    def _email(cls, value: str) -> str:
        return check_email(value)


class DelegatedOAuth2(_Request):
    provider: str | None = Field(None, max_length=64, description="The OAuth app id; if given, that of "
                                                                  "`delegatedAccount`")
    auth: DelegatedAuth


class AccountCreate(_AccountSettings):
    """``POST /v1/account``: EmailEngine's body for a shared mailbox that uses the credential of an existing
    account (``oauth2.auth.delegatedAccount``), with no new sign-in. Accounts with their own credentials (EmailEngine's
    ``imap``/``smtp``/``oauth2`` with tokens) are connected by a sign-in (the form), not here."""

    model_config = ConfigDict(populate_by_name=True)

    account: AccountId | None = Field(None, description="Account id; null, empty or left out: derived from the "
                                                        "tenant and the mailbox, as a sign-in derives it")
    email: str | None = Field(None, description="The shared mailbox; if given, the same as "
                                                "`oauth2.auth.delegatedUser`")
    expectedEmail: str | None = Field(None, description="Pinned on the account: the mailbox or the principal")
    oauth2: DelegatedOAuth2
    imap: Literal[False] | None = Field(None, description="Only `false` (no IMAP settings of its own)")
    smtp: Literal[False] | None = Field(None, description="Only `false` (no SMTP settings of its own)")

    @field_validator("email", "expectedEmail")
    @classmethod
    def _checked_email(cls, value: str | None) -> str | None:
        return None if value is None else check_email(value)

    @model_validator(mode="after")
    def _one_mailbox(self) -> AccountCreate:
        if self.email and self.email.lower() != self.oauth2.auth.delegatedUser.lower():
            raise ValueError("email: must be the shared mailbox of oauth2.auth.delegatedUser")
        return self


class AccountCreated(_Model):
    account: str
    state: Literal["new", "existing"] = Field(..., description="A new account, or an existing one updated")


class AccountDeleteQuery(_Request):
    """Query parameters of ``DELETE /v1/account/{account}``."""

    revoke: bool = Field(False, description="Also destroy the Microsoft grant this service holds (its refresh "
                                            "token), when no other account uses it; `revoked` in the answer says")


class AccountDeleted(_Model):
    account: str
    deleted: bool = True
    revoked: bool | None = Field(
        None, description="With `revoke=true`: whether this service's copy of the Microsoft grant (the refresh "
                          "token) was destroyed; false while other accounts still use the same sign-in")


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
    """EmailEngine's fields (``account``, ``user``, ``provider``, ``accessToken``, ``app``, ``registeredScopes``,
    ``expires``, ``cached``) beside this service's protocol-aware ``imap``/``smtp``/``graph`` blocks."""

    account: str
    user: str = Field(..., description="The authenticating principal (the signer's UPN), also for a shared "
                                       "mailbox, as EmailEngine's `user`; the mailbox is `imap.user`")
    accessToken: str
    expires: str = Field(..., json_schema_extra={"format": "date-time"},
                         description="UTC expiry with milliseconds, e.g. 2025-01-31T12:00:00.000Z")
    cached: bool = Field(..., description="True: served from the cache (no call to Microsoft)")
    app: str = Field(..., description="The OAuth app id (`type` of the form)")
    scopes: list[str]
    registeredScopes: list[str] = Field(..., description="EmailEngine's name for the same scopes")
    provider: Provider = "outlook"
    tokenType: Literal["Bearer"] = "Bearer"
    delegated: bool
    imap: ImapSettings
    smtp: SmtpSettings
    graph: GraphSettings


class OauthRenewErrorBody(ErrorBody):
    """403 of the token hand-off (EmailEngine's ``OauthRenewError``): the access token could not be renewed.
    ``authenticationFailed: true``: only a new sign-in (``POST /v1/account/{account}/reauth``) repairs it, the
    account is ``authenticationError``; false: Microsoft refused the OAuth app itself (its administrator fixes it)."""

    code: Literal["OauthRenewError"]
    authenticationFailed: bool
    account: str
    state: Literal["authenticationError"] | None = Field(None, description="Present when authenticationFailed")
    errorCode: str = Field(..., description="Microsoft's OAuth error (invalid_grant, invalid_client, ...) or "
                                            "credential_missing")
    errorDescription: str


# --- webhooks (scope ``admin``; implemented in shared/webhooks/dispatcher.py) ----------------------------------------

EventType = Literal["accountAdded", "accountInitialized", "authenticationSuccess", "authenticationError",
                    "accountDeleted", "mailboxAccessLost"]
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
