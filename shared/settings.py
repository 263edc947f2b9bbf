"""Settings, read once from the environment into a pydantic model.

Sources, highest first: environment variables, then the ``Values`` of ``local.settings.json`` (the file
Core Tools reads; our local host and the admin CLI read it too). Azure app settings arrive as environment
variables, so the same model serves both. Every name is documented in ``local.settings.example.json``
and is a contract with the Bicep template (``infra/bicep``) and the tests.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_SETTINGS_FILE = PROJECT_ROOT / "local.settings.json"

# Environment variables that only exist inside Azure App Service / Functions. Their presence means the
# code runs in Azure, where local-only conveniences (local secret store, sandbox) must refuse to start.
AZURE_MARKERS = ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class SettingsError(RuntimeError):
    """A configuration that cannot work; raised at first use, with the setting's name."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    public_url: str = Field("http://localhost:7071", alias="MC_PUBLIC_URL")
    tables_connection_string: str | None = Field(None, alias="MC_TABLES_CONNECTION_STRING")
    tables_endpoint: str | None = Field(None, alias="MC_TABLES_ENDPOINT")
    table_prefix: str = Field("", alias="MC_TABLE_PREFIX", pattern=r"^[A-Za-z]?[A-Za-z0-9]{0,20}$")
    key_vault_url: str | None = Field(None, alias="MC_KEY_VAULT_URL")
    local_secret_key: str | None = Field(None, alias="MC_LOCAL_SECRET_KEY")
    # Envelope mode: the Key Vault key (KEK) that wraps the data keys (Bicep creates it; keyvault.bicep).
    data_key_name: str = Field("mc-data-key", alias="MC_DATA_KEY_NAME", pattern=r"^[0-9A-Za-z-]{1,127}$")
    signing_key: str | None = Field(None, alias="MC_SIGNING_KEY")
    redirect_allowlist: str = Field("", alias="MC_REDIRECT_ALLOWLIST")
    link_ttl_seconds: int = Field(24 * 3600, alias="MC_LINK_TTL_SECONDS", gt=0)
    link_max_ttl_seconds: int = Field(7 * 24 * 3600, alias="MC_LINK_MAX_TTL_SECONDS", gt=0)
    flow_ttl_seconds: int = Field(15 * 60, alias="MC_FLOW_TTL_SECONDS", gt=0)
    authority_host: str | None = Field(None, alias="MC_AUTHORITY_HOST")
    graph_url: str | None = Field(None, alias="MC_GRAPH_URL")
    ca_bundle: str | None = Field(None, alias="MC_CA_BUNDLE")
    # Mailbox access check at sign-in (shared/microsoft/access_check.py): on (default) | off | strict.
    access_check: Literal["on", "off", "strict"] = Field("on", alias="MC_ACCESS_CHECK")
    # Tests and sandbox only: the IMAP server the access check logs in to, host[:port] (default port 993).
    imap_host: str | None = Field(None, alias="MC_IMAP_HOST",
                                     pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
    # Webhooks (shared/webhooks/): targets from settings, besides those registered through /v1/webhooks.
    webhook_urls: str = Field("", alias="MC_WEBHOOK_URLS")
    # Local only: the signing secret of the MC_WEBHOOK_URLS targets (in Azure: Key Vault mc-webhook-secret).
    webhook_secret: str | None = Field(None, alias="MC_WEBHOOK_SECRET")
    # redirectUrl of the re-authentication link in authenticationError webhooks (empty: the account's last
    # sign-in redirectUrl).
    reauth_redirect_url: str | None = Field(None, alias="MC_REAUTH_REDIRECT_URL")
    # Credential keep-alive (shared/handoff/keepalive.py): refresh refresh tokens written more than this many days
    # ago (Microsoft's window is 90 days of inactivity), at most this many credentials per hourly run.
    keepalive_days: int = Field(30, alias="MC_KEEPALIVE_DAYS", ge=1, le=80)
    keepalive_max_per_run: int = Field(50, alias="MC_KEEPALIVE_MAX_PER_RUN", ge=0, le=10_000)
    # API tokens and OAuth apps come from an instance-local cache (shared/storage/tables/apitokens.py, apps.py):
    # a revoked token, or a disabled, deleted or changed app, is seen by every instance within this many
    # seconds (the instance that made the change at once). 0: no cache, one Table read per check.
    auth_cache_seconds: float = Field(5.0, alias="MC_AUTH_CACHE_SECONDS", ge=0, le=60)
    # GET /v1/accounts's total: each count shard row is kept by the instance this many seconds (the instance that
    # changes a count reads it again at once). 0: read on every listing (8 point reads per OAuth app).
    count_cache_seconds: float = Field(5.0, alias="MC_COUNT_CACHE_SECONDS", ge=0, le=300)
    # Logging (shared/web/logs.py): our loggers (None: the host's level, INFO as deployed) and the libraries'
    # (azure.*, msal, urllib3). Applied when the function app is imported (from the environment) and again at
    # the first request (from these settings).
    log_level: LogLevel | None = Field(None, alias="MC_LOG_LEVEL")
    sdk_log_level: LogLevel = Field("WARNING", alias="MC_SDK_LOG_LEVEL")
    # Where refresh tokens and client secrets live (shared/storage/sealed.py): keyvault (default: one Key Vault
    # secret per credential) | envelope (AES-256-GCM ciphertext on the Table row, under data keys wrapped by a
    # Key Vault key: shared/storage/datakeys.py). `python -m shared.cli migrate-secrets` moves a deployment.
    secret_mode: Literal["keyvault", "envelope"] = Field("keyvault", alias="MC_SECRET_MODE")
    # Client id of the user-assigned managed identity (set by the Bicep template).
    azure_client_id: str | None = Field(None, alias="AZURE_CLIENT_ID")
    in_azure: bool = False

    @field_validator("access_check", "secret_mode", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", "sdk_log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def webhook_url_list(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(u.strip() for u in self.webhook_urls.split(",") if u.strip()))

    @property
    def redirect_origins(self) -> tuple[str, ...]:
        """``MC_REDIRECT_ALLOWLIST`` as origins spelt like ``shared.checks.origin_of`` spells a URL's
        (``https://app.example:443/`` -> ``https://app.example``), so an entry matches however it is written.

        A malformed entry (not an http(s) origin: a path, credentials, a bad port, ...) is logged once and
        matches nothing; the allowlist stays in force, so a typo refuses redirects instead of allowing every
        origin, and never fails a request.
        """
        entries = [e.strip() for e in self.redirect_allowlist.split(",") if e.strip()]
        return tuple(normalise_origin(entry, n) or f"(malformed entry {n})" for n, entry in enumerate(entries, 1))

    @property
    def oauth_redirect_uri(self) -> str:
        """The one redirect URI registered in Entra for every app."""
        return f"{self.public_url}/oauth"

    @property
    def insecure_localhost(self) -> bool:
        """Plain-http localhost: the only place cookies may go without ``Secure``."""
        return self.public_url.startswith(("http://localhost", "http://127.0.0.1"))

    def table_name(self, base: str) -> str:
        return f"{self.table_prefix}{base}"


_reported: set[str] = set()


def normalise_origin(entry: str, position: int = 1) -> str | None:
    """An allowlist entry as ``scheme://host[:port]`` (lower case, default port dropped, IPv6 in brackets:
    the spelling of ``shared.checks.origin_of``), or None (logged once) when it is not an http(s) origin."""
    try:
        parts = urlsplit(entry.strip())
        port = parts.port
        host = parts.hostname or ""
        if (parts.scheme.lower() not in ("http", "https") or not host or port == 0 or "@" in parts.netloc
                or parts.path not in ("", "/") or parts.query or parts.fragment or "#" in entry):
            raise ValueError(entry)
    except ValueError:
        if entry not in _reported:  # by position: an entry may hold anything, even credentials
            _reported.add(entry)
            logging.getLogger("mailbox_connect.settings").error(
                "MC_REDIRECT_ALLOWLIST: entry %d is not an origin (scheme://host[:port]); it matches nothing",
                position)
        return None
    scheme = parts.scheme.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}[scheme]
    return f"{scheme}://{host}{f':{port}' if port and port != default else ''}".lower()


def read_local_settings(path: Path | None = None) -> dict[str, str]:
    """The ``Values`` of local.settings.json, or nothing when the file is absent."""
    path = path or LOCAL_SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path.name} is not readable JSON: {exc}") from exc
    values = data.get("Values", {}) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in values.items() if v is not None}


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    merged = {**read_local_settings(), **env}
    values: dict[str, object] = {k: v for k, v in merged.items() if v != ""}
    values["in_azure"] = any(env.get(name) for name in AZURE_MARKERS)
    return Settings.model_validate(values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests call ``get_settings.cache_clear()``)."""
    return load_settings()
