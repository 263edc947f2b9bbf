"""Storage: the only Azure data-plane I/O of the service.

``tables/`` (Table Storage, one module per table; ``tables.records`` the row model and the point-call
helpers, ``tables.concurrency`` the one read-change-write-if-unchanged loop), ``errors`` (SDK failures as
the project's own: ``NotFound``, ``Conflict``, ``StorageUnavailable``), ``secrets/`` (Key Vault or the local
encrypted store: refresh tokens and client secrets), ``keys`` (the link-signing key), ``azure_credential``
(the managed identity, created lazily). May import: leaves, ``checks``, ``schemas``. Never ``microsoft``
(its peer) or anything above. The Azure SDK is imported inside functions (cold start). This file stays import-free.
"""
