"""Admin: the services behind the ``/v1`` management API, one module per area.

``forms`` (the EmailEngine form), ``accounts``, ``links`` (which account a link produced: verifying the
return), ``apps`` (OAuth apps), ``apitokens``, ``webhooks`` (targets and dead letters), ``bootstrap`` (the
one-time admin token of a fresh deployment). Services that touch accounts take the caller
(``core.access.Caller``). Plain functions from
schemas to schemas; HTTP is the web layer's job. May import every layer below (leaves to ``signin``,
``handoff``, ``webhooks``); never ``web`` or ``cli``. This file stays import-free.
"""
