"""The one Azure credential of the process (managed identity in Azure, the developer's login locally)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from shared.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from azure.core.credentials import TokenCredential

_lock = threading.Lock()
_credential: TokenCredential | None = None


def get_azure_credential(settings: Settings) -> TokenCredential:
    """``DefaultAzureCredential`` pinned to the user-assigned identity when ``AZURE_CLIENT_ID`` is set.

    Built lazily: azure-identity is a heavy import and most warm requests never need a new token.
    """
    global _credential
    with _lock:
        if _credential is None:
            from azure.identity import DefaultAzureCredential

            kwargs: dict[str, Any] = {"exclude_interactive_browser_credential": True}
            if settings.azure_client_id:
                kwargs["managed_identity_client_id"] = settings.azure_client_id
            _credential = DefaultAzureCredential(**kwargs)
        return _credential
