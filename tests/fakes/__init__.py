"""Protocol-level fakes of the services Mailbox Connect talks to (Microsoft identity, Key Vault)."""
