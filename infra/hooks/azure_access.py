"""How the postprovision hook reaches Key Vault: as whom, through which plane, and how long it waits.

* **As whom.** The deployment grants its roles to ``principalId`` = ``AZURE_PRINCIPAL_ID``, which azd fills
  from its own sign-in. So the hook signs in as azd first (``AzureDeveloperCliCredential``), then with the
  Azure CLI, then with environment credentials (a service principal in a pipeline); never in
  DefaultAzureCredential's order, which may pick another identity that the roles were not granted to.
  :class:`AdminCredential` remembers which sign-in answered and the claims of its token (decoded, not
  verified: only to name the principal in messages; the token itself is never printed).
* **Through which plane.** With public networking the Key Vault data plane (``SecretClient``). With private
  networking this machine cannot reach the vault, so :class:`ArmSecrets` writes the secret through Azure
  Resource Manager (the control plane), which needs no network path to the vault.
* **How long.** A role assignment made by the same ``azd provision`` can take many minutes to apply;
  :class:`RbacWait` retries a 403 with backoff for up to ``MC_HOOK_RBAC_WAIT_SECONDS`` (default 600 s).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

DEFAULT_RBAC_WAIT = 600.0
FIRST_DELAY, MAX_DELAY = 5.0, 60.0
ARM_API_VERSION = "2023-07-01"
DEFAULT_ARM = "https://management.azure.com/"


class HookError(Exception):
    """A failure the hook explains itself (the message is shown to the admin as is)."""


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def firewall_refusal(exc: BaseException) -> bool:
    """Key Vault's 403 for a network refusal: waiting for a role assignment cannot fix it."""
    return status_of(exc) == 403 and any(code in str(exc) for code in ("ForbiddenByFirewall", "ForbiddenByConnection"))


# --- who the hook is signed in as --------------------------------------------------------------------------

def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT access token, decoded without verification (only to name the principal)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def describe_principal(claims: dict[str, Any]) -> str:
    """``user admin@contoso.com (object id ...)`` or ``service principal with application id ...``."""
    oid = claims.get("oid") or "unknown"
    user = claims.get("upn") or claims.get("preferred_username") or claims.get("unique_name")
    if user:
        return f"user {user} (object id {oid})"
    app = claims.get("appid") or claims.get("azp")
    if app:
        return f"service principal with application id {app} (object id {oid})"
    return f"object id {oid}"


class AdminCredential:
    """Tries each sign-in in order; the first that gives a token is used, and its claims are kept."""

    def __init__(self, chain: Sequence[tuple[str, Any]]) -> None:
        self.chain = list(chain)
        self.used: str | None = None  # label of the sign-in that answered last
        self.claims: dict[str, Any] = {}

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.exceptions import ClientAuthenticationError  # CredentialUnavailableError's base

        failures = []
        for label, credential in self.chain:
            try:
                token = credential.get_token(*scopes, **kwargs)
            except ClientAuthenticationError as exc:
                failures.append(f"    {label}: {getattr(exc, 'message', None) or exc}")
                continue
            self.used, self.claims = label, token_claims(token.token)
            return token
        raise ClientAuthenticationError(
            "could not sign in to Azure with any of:\n" + "\n".join(failures)
            + "\n  Sign in as the admin who ran azd provision: azd auth login (or az login)."
        )

    def principal(self, scope: str) -> str:
        """Who the hook is signed in as (from the last token; asks for one for ``scope`` if none yet)."""
        if not self.claims:
            try:
                self.get_token(scope)
            except Exception:  # noqa: BLE001 - only to describe; the real error is reported by the caller
                return "nobody (no sign-in worked)"
        return f"{describe_principal(self.claims)}, with {self.used}"


def admin_credential(env: dict[str, str], classes: Sequence[type] | None = None) -> AdminCredential:
    """azd's own sign-in (the principal the roles were granted to), then the Azure CLI, then the environment."""
    if classes is None:
        from azure.identity import AzureCliCredential, AzureDeveloperCliCredential, EnvironmentCredential

        classes = (AzureDeveloperCliCredential, AzureCliCredential, EnvironmentCredential)
    azd, az, environment = classes
    tenant = env.get("AZURE_TENANT_ID", "")
    return AdminCredential([
        ("azd auth login", azd(tenant_id=tenant, process_timeout=30)),
        ("az login", az(tenant_id=tenant, process_timeout=30)),
        ("AZURE_CLIENT_ID/AZURE_CLIENT_SECRET (environment)", environment()),
    ])


# --- waiting for RBAC -------------------------------------------------------------------------------------

def rbac_wait_seconds(env: dict[str, str]) -> float:
    raw = env.get("MC_HOOK_RBAC_WAIT_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_RBAC_WAIT
    except ValueError:
        print(f"  MC_HOOK_RBAC_WAIT_SECONDS={raw!r} is not a number; waiting up to {DEFAULT_RBAC_WAIT:.0f}s.",
              file=sys.stderr)
        return DEFAULT_RBAC_WAIT


@dataclass
class RbacWait:
    """Retries calls answered 403 until one total deadline, shared by every call of the run."""

    max_wait: float = DEFAULT_RBAC_WAIT
    sleep: Callable[[float], Any] = time.sleep
    clock: Callable[[], float] = time.monotonic
    service: str = "Key Vault"
    out: TextIO = field(default_factory=lambda: sys.stderr)
    slept: float = 0.0
    retries: int = 0

    def __post_init__(self) -> None:
        self._start = self.clock()

    def elapsed(self) -> float:
        # The larger of the wall clock and the time slept, so a fake sleep (tests) still reaches the deadline.
        return max(self.clock() - self._start, self.slept)

    def __call__(self, call: Callable[[], Any]) -> Any:
        delay = FIRST_DELAY
        while True:
            try:
                return call()
            except Exception as exc:  # azure.core.exceptions.HttpResponseError and subclasses
                left = self.max_wait - self.elapsed()
                if status_of(exc) != 403 or firewall_refusal(exc) or left <= 0:
                    raise
                delay = min(delay, left)
                self.retries += 1
                print(f"  {self.service} answered 403 Forbidden: the role assignment is not in effect yet. "
                      f"Retry {self.retries} in {delay:.0f}s (waited {self.elapsed():.0f}s of up to "
                      f"{self.max_wait:.0f}s) ...",
                      file=self.out, flush=True)
                self.sleep(delay)
                self.slept += delay
                delay = min(delay * 2, MAX_DELAY)


# --- the two planes ---------------------------------------------------------------------------------------

def vault_scope(vault_url: str) -> str:
    """``https://vault.azure.net/.default`` for ``https://kv.vault.azure.net/`` (any cloud's vault suffix)."""
    return f"https://{urlsplit(vault_url).hostname.split('.', 1)[1]}/.default"


def arm_endpoint(env: dict[str, str]) -> str:
    return (env.get("AZURE_RESOURCE_MANAGER_ENDPOINT") or DEFAULT_ARM).rstrip("/")


class ArmSecrets:
    """Key Vault secrets through Azure Resource Manager: the part of ``SecretClient`` the hook uses.

    ARM never returns a secret's value (GET tells only whether it exists) and cannot recover a soft-deleted
    secret; it can create one, which is all the hook needs, without any network path to the vault.
    """

    def __init__(self, env: dict[str, str], credential: Any) -> None:
        from azure.core import PipelineClient
        from azure.core.pipeline.policies import (
            BearerTokenCredentialPolicy,
            HeadersPolicy,
            RetryPolicy,
            UserAgentPolicy,
        )

        arm = arm_endpoint(env)
        self.vault_name = env["AZURE_KEY_VAULT_NAME"]
        subscription, group, vault = (quote(env[name], safe="") for name in (
            "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_KEY_VAULT_NAME"))
        self._path = (f"{arm}/subscriptions/{subscription}/resourceGroups/{group}"
                      f"/providers/Microsoft.KeyVault/vaults/{vault}/secrets/")
        policies = [
            HeadersPolicy(), UserAgentPolicy("mailbox-connect-postprovision"), RetryPolicy(),
            BearerTokenCredentialPolicy(credential, f"{arm}/.default"),
        ]
        self._client = PipelineClient(arm, policies=policies)

    def _send(self, method: str, name: str, body: dict | None = None) -> dict:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.core.rest import HttpRequest

        request = HttpRequest(method, self._path + quote(name, safe=""), params={"api-version": ARM_API_VERSION},
                              json=body)
        response = self._client.send_request(request)
        if response.status_code == 404:
            raise ResourceNotFoundError(response=response)
        if response.status_code >= 400:
            raise HttpResponseError(response=response)
        return response.json()

    def get_secret(self, name: str) -> dict:
        return self._send("GET", name)

    def set_secret(self, name: str, value: str, *, content_type: str = "text/plain", **_: Any) -> dict:
        return self._send("PUT", name, {"properties": {"value": value, "contentType": content_type}})

    def begin_recover_deleted_secret(self, name: str) -> Any:
        raise HookError(
            f"Key Vault secret {name} is deleted but recoverable (soft delete), and Azure Resource Manager cannot "
            f"recover it. From a machine that reaches the vault's private endpoint, run:\n"
            f"      az keyvault secret recover --vault-name {self.vault_name} --name {name}"
        )


def open_secrets(env: dict[str, str], credential: Any, *, private: bool) -> Any:
    """The secret client of this deployment: ARM with private networking, the data plane otherwise."""
    if private:
        return ArmSecrets(env, credential)
    from azure.keyvault.secrets import SecretClient

    return SecretClient(vault_url=env["MC_KEY_VAULT_URL"], credential=credential)


def deleted_but_recoverable(exc: BaseException) -> bool:
    """Key Vault's 409 for a soft-deleted name (code ObjectIsDeletedButRecoverable)."""
    if status_of(exc) != 409:
        return False
    error = getattr(exc, "error", None)
    inner = getattr(error, "innererror", None) or {}
    codes = {getattr(error, "code", None), inner.get("code") if isinstance(inner, dict) else None}
    return ("ObjectIsDeletedButRecoverable" in codes or "ObjectIsDeletedButRecoverable" in str(exc)
            or "deleted but recoverable" in str(exc).lower())


def put_secret(client: Any, name: str, value: str, wait: RbacWait) -> None:
    """Write ``name`` (a new version when it exists); a soft-deleted one is recovered first."""
    from azure.core.exceptions import HttpResponseError

    def write() -> None:
        wait(lambda: client.set_secret(name, value, content_type="text/plain"))

    try:
        write()
    except HttpResponseError as exc:
        if not deleted_but_recoverable(exc):
            raise
        client.begin_recover_deleted_secret(name).wait()
        write()
