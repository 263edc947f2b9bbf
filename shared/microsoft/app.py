"""What the Microsoft layer needs to know of an OAuth app, as a Protocol (``storage.tables.apps.OAuthApp``
satisfies it), so ``microsoft`` and ``storage`` stay peers that never import each other."""

from __future__ import annotations

from typing import Protocol

from shared.clouds import BaseScopes, Cloud


class AppRegistration(Protocol):
    @property
    def clientId(self) -> str: ...  # noqa: N802 - the stored field's name

    @property
    def authority(self) -> str: ...  # common | organizations | consumers | <tenant id or domain>

    @property
    def cloud(self) -> Cloud: ...

    @property
    def baseScopes(self) -> BaseScopes: ...  # noqa: N802 - the stored field's name
