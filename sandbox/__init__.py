"""The sandbox: a local stand-in for Microsoft (Entra ID) so Mailbox Connect runs with no Microsoft account.

A development and CI tool, never part of the deployment (``.funcignore`` excludes this folder), and it
refuses to start where the Azure Functions / App Service markers say the code runs in Azure.

* ``sandbox.identity`` - ``FakeIdentity``: Entra's v2 endpoints (discovery, authorize, token, JWKS) over
  HTTPS with a throw-away CA; with ``interactive=True`` the authorize endpoint shows a sign-in page.
* ``sandbox.tls`` - the throw-away CA (trustme) and the threaded HTTPS server.
* ``sandbox.server`` - ``Sandbox``: the fake with the test tenant ``contoso.example`` (its users and the
  shared mailboxes each can open), a sandbox OAuth client, and a small control API.
* ``sandbox.demo`` - the demo app page a sign-in lands on (``make run``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class SandboxRefused(RuntimeError):
    """The sandbox was asked to start where it must not run (in Azure)."""


def running_in_azure(environ: Mapping[str, str] | None = None) -> bool:
    """True when the Azure App Service / Functions markers are present (the same test as the settings)."""
    from shared.settings import AZURE_MARKERS

    env = os.environ if environ is None else environ
    return any(env.get(name) for name in AZURE_MARKERS)


def refuse_in_azure(what: str = "the sandbox", environ: Mapping[str, str] | None = None) -> None:
    if running_in_azure(environ):
        raise SandboxRefused(f"{what} is a local development tool and refuses to run in Azure "
                             "(WEBSITE_INSTANCE_ID / WEBSITE_SITE_NAME are set)")
