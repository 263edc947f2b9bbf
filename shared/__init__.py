"""Mailbox Connect: the application package (one module per concern).

Nothing here imports the Azure SDK, MSAL or azure-identity at module level: a cold start pays for every
import, so those are imported where they are used. The worker's start-up (``import function_app``) loads
only ``shared.web.blueprints``; each handler imports its own modules on first use (``tests/test_cold_start.py``).
"""
