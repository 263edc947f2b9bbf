"""The repository layer: the only code that talks to Table Storage.

One module per table. Table names are the base names below, prefixed with ``MC_TABLE_PREFIX``; the Bicep
template creates the same tables (a test compares the two).

``flows`` has no module any more: pending sign-ins live in the browser (``shared.signin.flowstate``, issue 14
point 2) and nothing writes it. It stays listed (and in the Bicep template) so that deployments and the tests
that assert it stays empty keep working; dropping it is a later, separate change.
"""

TABLES = ("accounts", "principals", "flows", "links", "apps", "apitokens", "secrets", "outbox", "webhooks",
          "deliveries", "accountcounts", "datakeys")
