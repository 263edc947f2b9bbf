"""Signin: the hosted flow a person goes through, from ``/accounts/new`` to the redirect back to the app.

``flow`` (start, complete, commit: the link claim, the credential, the account and its index rows) and
``pages`` (the HTML a person sees when it cannot go on; HTML only, the web layer sends it). May import
everything below it (leaves to ``core``); never ``handoff`` or ``webhooks`` (its peers) or anything above.
This file stays import-free.
"""
