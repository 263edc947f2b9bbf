"""Web: the HTTP edge, the only package that imports ``azure.functions``.

``blueprints/`` (one per area, registered by ``function_app``), ``api`` (the decorator of JSON handlers),
``http`` (body parsing, errors to responses), ``auth`` (API tokens), ``openapi`` (the document, built from
the schemas). May import every layer. This file stays import-free; blueprints import their handlers'
dependencies inside the handlers (``tests/test_cold_start.py``).
"""
