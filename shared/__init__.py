"""Mailbox Connect: the application package (one module per concern).

Nothing here imports the Azure SDK, MSAL or azure-identity at module level: a cold start pays for every
import, so those are imported where they are used.
"""
