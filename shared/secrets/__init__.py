"""The secret store: the only code that holds refresh tokens and client secrets at rest.

``get_secret_store()`` picks Key Vault when ``MC_KEY_VAULT_URL`` is set and the local encrypted store
otherwise; the local store refuses to start in Azure.
"""

from shared.secrets.base import (
    SecretNotFound,
    SecretStore,
    SecretStoreError,
    SecretStoreUnavailable,
    validate_secret_name,
)
from shared.secrets.factory import get_secret_store

__all__ = [
    "SecretNotFound",
    "SecretStore",
    "SecretStoreError",
    "SecretStoreUnavailable",
    "get_secret_store",
    "validate_secret_name",
]
