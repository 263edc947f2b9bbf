"""Who calls the API and what it may see: :class:`Caller`, built from the API token of the request.

An ``api`` token may be restricted to OAuth apps and/or account ids (``POST /v1/tokens`` with ``apps`` and
``accounts``). Every service that reads or acts on an account takes the caller and asks it here, so the rule
lives in one place:

* an account is visible when its id is in ``accounts`` (if set) and its app is in ``apps`` (if set); both
  restrictions apply together;
* an account the caller may not see is answered exactly like one that does not exist (404 with the same
  message), so a restricted token learns nothing about other apps' accounts;
* a form names one of the caller's apps (with exactly one, it is the default) and, for an account-restricted
  token, one of its accounts.

Restricted tokens have only the ``api`` scope (``shared.web.auth`` refuses them on ``admin`` routes as a
second line). Internal callers (the CLI, timers, tests) use :data:`UNRESTRICTED`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import NotFound

if TYPE_CHECKING:  # pragma: no cover
    from shared.storage.tables.accounts import Account
    from shared.storage.tables.apitokens import ApiToken


def account_not_found(account_id: str) -> NotFound:
    """The one answer for an unknown account and for an account the caller may not see."""
    return NotFound(f"no account with id {account_id!r}")


@dataclass(frozen=True)
class Caller:
    token_id: str | None = None
    apps: frozenset[str] | None = None  # None: every app
    accounts: frozenset[str] | None = None  # None: every account

    @classmethod
    def of(cls, token: ApiToken) -> Caller:
        return cls(token_id=token.id,
                   apps=None if token.apps is None else frozenset(token.apps),
                   accounts=None if token.accounts is None else frozenset(token.accounts))

    @property
    def restricted(self) -> bool:
        return self.apps is not None or self.accounts is not None

    def may_name(self, account_id: str) -> bool:
        """Whether the account id is within the caller's account list (apps are not checked here)."""
        return self.accounts is None or account_id in self.accounts

    def may_use_app(self, app_id: str | None) -> bool:
        return self.apps is None or (app_id is not None and app_id in self.apps)

    def sees(self, account: Account) -> bool:
        return self.may_name(account.account) and self.may_use_app(account.appId)

    def visible(self, account: Account | None, account_id: str) -> Account:
        """``account`` when it exists and the caller may see it; else the 404 of an unknown account."""
        if account is None or not self.sees(account):
            raise account_not_found(account_id)
        return account


UNRESTRICTED = Caller()
