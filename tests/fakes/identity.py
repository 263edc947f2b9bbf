"""Moved to ``sandbox.identity`` (the sandbox runs it for ``make run``); re-exported for the tests."""

from sandbox.identity import (  # noqa: F401
    CONSUMERS_TENANT_ID,
    GRAPH_RESOURCE,
    OIDC_SCOPES,
    REMOVE,
    FakeIdentity,
    FakeUser,
    resource_of,
)

__all__ = ["FakeIdentity", "FakeUser", "CONSUMERS_TENANT_ID", "REMOVE", "GRAPH_RESOURCE", "OIDC_SCOPES",
           "resource_of"]
