"""The repository layer: the only code that talks to Table Storage.

One module per table. Table names are the base names below, prefixed with ``MC_TABLE_PREFIX``; the Bicep
template creates the same tables (a test compares the two).
"""

TABLES = ("accounts", "principals", "flows", "links", "apps", "apitokens", "secrets", "outbox", "webhooks",
          "deliveries", "accountcounts")
