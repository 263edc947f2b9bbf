"""Core: the rules every capability shares, over storage and Microsoft.

``apps`` (resolving an OAuth app, its cached client secret, registering one), ``links`` (the signed link
codec and building form and re-authentication links), ``account_state`` (``connected`` and
``authenticationError`` transitions), ``events`` (the webhook events written with an account change),
``access`` (the API caller and what its token's restriction lets it see).
May import: leaves, ``checks``, ``schemas``, ``storage``, ``microsoft``. This file stays import-free.
"""
