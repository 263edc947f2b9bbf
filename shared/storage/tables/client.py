"""Table clients: built once per process and table, with the SDK imported on first use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from shared.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:  # pragma: no cover
    from azure.data.tables import TableClient, TableServiceClient

# The Azure SDK for Tables does not understand this shorthand (Core Tools and Storage Explorer do): it means
# Azurite's Table endpoint with Azurite's public, documented development account key.
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

_lock = threading.Lock()
_services: dict[tuple, TableServiceClient] = {}
_ensured: set[tuple] = set()


def _service(settings: Settings) -> TableServiceClient:
    key = (settings.tables_connection_string, settings.tables_endpoint, settings.ca_bundle)
    with _lock:
        service = _services.get(key)
        if service is None:
            service = _build_service(settings)
            _services[key] = service
        return service


def _build_service(settings: Settings) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    kwargs: dict[str, Any] = {"retry_total": 3, "connection_timeout": 5, "read_timeout": 15}
    if settings.ca_bundle:
        kwargs["connection_verify"] = settings.ca_bundle
    if settings.tables_connection_string and settings.tables_endpoint:
        # local.settings.json may carry Azurite's connection string while an admin exports the Azure
        # endpoint: refuse rather than silently write to the wrong storage.
        raise SettingsError("set either MC_TABLES_CONNECTION_STRING or MC_TABLES_ENDPOINT, not both")
    if settings.tables_connection_string:
        conn = settings.tables_connection_string
        if conn.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
            conn = DEVELOPMENT_STORAGE
        return TableServiceClient.from_connection_string(conn, **kwargs)
    if settings.tables_endpoint:
        from shared.storage.azure_credential import get_azure_credential

        return TableServiceClient(settings.tables_endpoint, credential=get_azure_credential(settings), **kwargs)
    raise SettingsError("set MC_TABLES_CONNECTION_STRING (local) or MC_TABLES_ENDPOINT (Azure)")


def table(base_name: str, settings: Settings | None = None) -> TableClient:
    """The client of one table; locally (connection string) the table is created on first use.

    In Azure the template creates the tables and the identity has data-plane rights only, so no
    create call is made there.
    """
    settings = settings or get_settings()
    service = _service(settings)
    name = settings.table_name(base_name)
    key = (id(service), name)
    if settings.tables_connection_string and key not in _ensured:
        service.create_table_if_not_exists(name)
        _ensured.add(key)
    return service.get_table_client(name)


def reset_clients() -> None:
    """Forget cached clients (tests switch storage between runs)."""
    with _lock:
        _services.clear()
        _ensured.clear()
