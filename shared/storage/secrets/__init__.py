"""The secret store: the only code that holds refresh tokens and client secrets at rest.

``factory.get_secret_store()`` picks Key Vault when ``MC_KEY_VAULT_URL`` is set and the local encrypted store
otherwise; the local store refuses to start in Azure. ``base`` holds the interface and its errors. Import
from those modules: this file stays import-free (a cold start pays for every import).
"""
