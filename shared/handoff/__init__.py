"""Handoff: fresh access tokens for the apps, and keeping unused credentials alive.

``tokens`` (``GET /v1/account/{account}/oauth-token``: cache, single-flight refresh, rotation) and
``keepalive`` (the timer that refreshes credentials nobody used lately). May import everything below it
(leaves to ``core``); never ``signin`` or ``webhooks`` (its peers) or anything above. This file stays
import-free.
"""
