"""``Sandbox``: a local Microsoft for ``make run`` and for app developers' CI.

It runs ``FakeIdentity`` with the test tenant **contoso.example** and its users, in interactive mode (a
sign-in page where a person picks the user, or cancels), with the browser-facing endpoints on plain
``http://localhost`` and discovery/token on HTTPS with a throw-away CA. The service is pointed at it with
``service_env()`` (``MC_AUTHORITY_HOST``, ``MC_CA_BUNDLE``) and uses an OAuth app registered by
``ensure_app()`` whose client the sandbox knows.

Test users (fixed object ids, so account ids are the same on every run):

======================  ===================================================================
ada@contoso.example     own mailbox only
bob@contoso.example     own mailbox; can open the shared mailboxes support@ and sales@
carol@contoso.example   own mailbox; cannot open any shared mailbox
======================  ===================================================================

The shared mailboxes each user can open are shown on the sign-in page (``FakeUser.shared_mailboxes``)
and enforced by fakes of Exchange's IMAP service and of Graph's mail folders (``sandbox/fakes/imap.py``,
``sandbox/fakes/graph.py``, sharing one permission table), which the service's mailbox access check asks
(``MC_IMAP_HOST``, ``MC_GRAPH_URL``): Carol connecting support@ is refused with
``error=mailbox_access_denied``. Those fakes live with the tests for now (a checkout has them; the sandbox
is a development tool too); without them the access check is turned off (``MC_ACCESS_CHECK=off``).

The sandbox refuses to start in Azure.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import refuse_in_azure
from .fakes.identity import FakeIdentity, FakeUser

if TYPE_CHECKING:  # pragma: no cover
    from shared.settings import Settings
    from shared.storage.tables.apps import OAuthApp

TENANT_DOMAIN = "contoso.example"
TENANT_ID = "c0a7e5a1-5a4d-4b0c-9e11-000000000001"
#: The sandbox OAuth app's client id (an app registered with it is recognised on the next run).
CLIENT_ID = "5a4db0c0-0000-4000-8000-00000000c0de"
APP_NAME = "Mailbox Connect (sandbox)"
SHARED_MAILBOXES = (f"support@{TENANT_DOMAIN}", f"sales@{TENANT_DOMAIN}")


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a pytest class

    upn: str
    name: str
    shared_mailboxes: tuple[str, ...] = ()
    note: str | None = None

    @property
    def oid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://{TENANT_DOMAIN}/users/{self.upn}"))


USERS = (
    TestUser(f"ada@{TENANT_DOMAIN}", "Ada Lovelace", note="Connects her own mailbox."),
    TestUser(f"bob@{TENANT_DOMAIN}", "Bob Smith", SHARED_MAILBOXES,
             note="A delegate: connects the shared mailboxes he can open."),
    TestUser(f"carol@{TENANT_DOMAIN}", "Carol Jones", note="Has no access to shared mailboxes."),
)


class Sandbox:
    """The fake identity platform with the test tenant. ``start()`` / ``stop()`` or a context manager."""

    def __init__(self, *, interactive: bool = True, mailboxes: bool = True) -> None:
        """``mailboxes``: also run the fakes of IMAP and Graph that the service's access check asks."""
        refuse_in_azure()
        self.identity = FakeIdentity(tenant_id=TENANT_ID, interactive=interactive, browser_http=True)
        self.users: dict[str, FakeUser] = {}
        for user in USERS:
            self.users[user.upn] = self.identity.add_user(
                user.upn, oid=user.oid, name=user.name, email=user.upn,
                shared_mailboxes=user.shared_mailboxes, note=user.note,
            )
        self.client_id = CLIENT_ID
        self.client_secret = secrets.token_urlsafe(32)
        self.graph: Any = None
        self.imap: Any = None
        if mailboxes:
            self._mail_fakes()

    def _mail_fakes(self) -> None:
        try:
            from sandbox.fakes.graph import FakeGraph, Mailboxes
            from sandbox.fakes.imap import FakeImap
        except ImportError:  # not a full checkout: the access check is turned off instead
            return
        table = Mailboxes()
        table.add_mailbox(*(u.upn for u in USERS), *SHARED_MAILBOXES)
        for user in USERS:
            for mailbox in user.shared_mailboxes:
                table.grant(user.upn, mailbox)
        self.graph = FakeGraph(self.identity, table)
        self.imap = FakeImap(self.identity, table)

    # -- lifecycle
    def start(self) -> Sandbox:
        refuse_in_azure()
        self.identity.start()
        for fake in (self.graph, self.imap):
            if fake is not None:
                fake.start()
        return self

    def stop(self) -> None:
        for fake in (self.imap, self.graph):
            if fake is not None:
                fake.stop()
        self.identity.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- wiring the service
    def service_env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """Settings that point the service at the sandbox (environment variables win over local settings)."""
        env = {"MC_AUTHORITY_HOST": self.identity.host, "MC_CA_BUNDLE": self.identity.ca_bundle}
        if self.graph is not None and self.imap is not None:
            env.update(MC_GRAPH_URL=self.graph.url, MC_IMAP_HOST=self.imap.address)
        elif not (environ or {}).get("MC_ACCESS_CHECK"):
            env["MC_ACCESS_CHECK"] = "off"  # nothing to ask (see the module docstring)
        return env

    def ensure_app(self, settings: Settings, *, base_scopes: str = "imap") -> OAuthApp:
        """The sandbox OAuth app in the service's tables: reused when an earlier run registered it (a
        persistent Table Storage), else registered now. The fake learns its client secret either way."""
        from shared.core.apps import client_secret, register_app
        from shared.storage.tables.apps import list_apps

        redirect_uri = settings.oauth_redirect_uri
        for app in list_apps():
            if app.clientId == CLIENT_ID and app.enabled and app.baseScopes == base_scopes:
                self.client_secret = client_secret(app, settings)
                self.identity.add_client(CLIENT_ID, self.client_secret, [redirect_uri], name=APP_NAME)
                return app
        self.identity.add_client(CLIENT_ID, self.client_secret, [redirect_uri], name=APP_NAME)
        return register_app(name="sandbox", client_id=CLIENT_ID, client_secret_value=self.client_secret,
                            authority="organizations", base_scopes=base_scopes, settings=settings)

    # -- control (for scripts and CI)
    def sign_in_as(self, upn: str | None) -> None:
        """``upn``: every following sign-in is that user, with no page (CI). None: the sign-in page again."""
        if upn is None:
            self.identity.interactive = True
            return
        user = self.identity.find_user(upn)
        if user is None:
            raise KeyError(f"no sandbox user {upn!r}; users: {', '.join(self.users)}")
        self.identity.sign_in_as(user)
        self.identity.interactive = False

    def describe(self) -> dict[str, object]:
        return {
            "mailboxChecks": self.imap is not None,
            "authorityHost": self.identity.host,
            "caBundle": self.identity.ca_bundle,
            "signInUrl": self.identity.browser_url,
            "tenant": {"id": TENANT_ID, "domain": TENANT_DOMAIN},
            "users": [{"upn": u.upn, "name": u.name, "sharedMailboxes": list(u.shared_mailboxes)} for u in USERS],
        }
