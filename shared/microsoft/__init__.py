"""Microsoft: everything that talks to Microsoft's services on a user's behalf.

``identity`` (MSAL: authorize, redeem, refresh, id_token checks), ``access_check`` (can the signer open
the mailbox: IMAP or Graph), ``outbound`` (the shared HTTP session), ``app`` (the Protocol of an OAuth app
these need, so this package never imports ``storage``, its peer). May import: leaves, ``checks``,
``schemas``. MSAL is imported inside functions (cold start). This file stays import-free.
"""
