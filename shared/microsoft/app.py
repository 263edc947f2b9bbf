"""What the Microsoft layer needs to know of an OAuth app, as a Protocol (``storage.tables.apps.OAuthApp``
satisfies it), so ``microsoft`` and ``storage`` stay peers that never import each other."""

from __future__ import annotations

from typing import Protocol


class AppRegistration(Protocol):
    @property
    def clientId(self) -> str: ...  # noqa: N802 - the stored field's name

    @property
    def authority(self) -> str: ...  # common | organizations | consumers | <tenant id or domain>

    @property
    def cloud(self) -> str: ...  # a key of shared.clouds.CLOUDS

    @property
    def baseScopes(self) -> str: ...  # noqa: N802 - imap | api
