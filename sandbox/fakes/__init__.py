"""Protocol-level fakes of the services Mailbox Connect talks to, in one place for the tests and the sandbox.

``identity`` (Entra's v2 endpoints, with ``signin_page``), ``tls`` (a throw-away CA and HTTPS server),
``keyvault`` (Key Vault's secrets REST API, for the real azure-keyvault-secrets client), ``graph`` and
``imap`` (mail folders and IMAP logins sharing one permission table), ``webhooks`` (a receiver and a clock).
``sandbox/`` runs some of them for ``make run``; ``tests/`` imports them from here, never the other way.
"""
