"""Microsoft clouds: sign-in hosts, Graph and Outlook resources, mail hosts, and the scopes each app type asks.

Each cloud needs its own Entra app registration. ``MC_AUTHORITY_HOST`` / ``MC_GRAPH_URL`` override the
endpoints (tests and the sandbox point them at local fakes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Cloud = Literal["global", "gcc-high", "dod", "china"]
"""A cloud's name: the ``cloud`` of an OAuth app (``shared.schemas`` and the stored row use this one)."""
BaseScopes = Literal["imap", "api"]
"""What an app's tokens are for: ``imap`` (IMAP/SMTP XOAUTH2) or ``api`` (Microsoft Graph)."""
# MSAL adds these itself and raises ValueError if they are passed; they are still part of the consent.
RESERVED_SCOPES = ("openid", "profile", "offline_access")


@dataclass(frozen=True)
class CloudEndpoints:
    authority_host: str
    graph_url: str
    outlook_resource: str
    imap_host: str
    smtp_host: str


CLOUDS: dict[Cloud, CloudEndpoints] = {
    "global": CloudEndpoints("login.microsoftonline.com", "https://graph.microsoft.com", "https://outlook.office.com",
                             "outlook.office365.com", "smtp.office365.com"),
    "gcc-high": CloudEndpoints("login.microsoftonline.us", "https://graph.microsoft.us", "https://outlook.office365.us",
                               "outlook.office365.us", "smtp.office365.us"),
    "dod": CloudEndpoints("login.microsoftonline.us", "https://dod-graph.microsoft.us", "https://outlook.office365.us",
                          "outlook.office365.us", "smtp.office365.us"),
    "china": CloudEndpoints("login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn",
                            "https://partner.outlook.cn", "partner.outlook.cn", "smtp.partner.outlook.cn"),
}


def scopes_for(cloud: Cloud, base: BaseScopes, *, delegated: bool, extra: tuple[str, ...] = ()) -> list[str]:
    """Resource scopes to pass to MSAL (without the reserved OIDC ones)."""
    c = CLOUDS[cloud]
    if base == "imap":
        scopes = [f"{c.outlook_resource}/IMAP.AccessAsUser.All", f"{c.outlook_resource}/SMTP.Send"]
    else:
        names = ["Mail.ReadWrite", "Mail.Send", "User.Read"]
        if delegated:
            names += ["Mail.ReadWrite.Shared", "Mail.Send.Shared"]
        scopes = [f"{c.graph_url}/{n}" for n in names]
    scopes += [s for s in extra if s not in scopes and s not in RESERVED_SCOPES]
    return scopes


def consent_scopes(scopes: list[str]) -> list[str]:
    """What the user actually consents to: the resource scopes plus the OIDC ones MSAL adds."""
    return list(scopes) + [s for s in RESERVED_SCOPES if s not in scopes]


def authority_host(cloud: Cloud, override: str | None) -> str:
    return override or CLOUDS[cloud].authority_host
