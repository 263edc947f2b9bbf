"""HTTP blueprints, one per area. Handlers parse, call a service function and render; nothing more.

Cold start: the Functions worker imports every blueprint (through ``function_app``) when an instance starts,
so a blueprint imports only ``azure.functions`` and the standard library at module level; each handler
imports what it needs (services, models, settings) when it first runs, so a token hand-off never loads
the OpenAPI builder or the webhook code. ``tests/test_cold_start.py`` guards this.
"""
