"""Row models of the tables, with the conversion to and from Table entities in one place; and the few calls
the table modules make through the SDK's errors (``shared.storage.errors``): a point read that may find
nothing, a create that may meet a row, ETag-conditioned writes that may lose a race."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

from shared.storage.errors import Conflict, NotFound, storage_errors


def utcnow() -> datetime:
    return datetime.now(UTC)


class Record(BaseModel):
    """Base row: JSON-typed fields are stored as strings; ``etag`` comes back from reads."""

    model_config = ConfigDict(extra="ignore", defer_build=True)  # built on first use: a request uses a few
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ()
    etag: str | None = Field(None, exclude=True)

    def to_entity(self, partition_key: str, row_key: str = "") -> dict[str, Any]:
        entity: dict[str, Any] = {"PartitionKey": partition_key, "RowKey": row_key}
        for key, value in self.model_dump(mode="python", exclude={"etag"}).items():
            if value is None:
                continue
            entity[key] = json.dumps(value, separators=(",", ":")) if key in self.JSON_FIELDS else value
        return entity

    @classmethod
    def from_entity(cls, entity: Any) -> Self:
        data = {k: v for k, v in dict(entity).items() if k not in ("PartitionKey", "RowKey")}
        for key in cls.JSON_FIELDS:
            if isinstance(data.get(key), str):
                data[key] = json.loads(data[key])
        record = cls.model_validate(data)
        record.etag = (getattr(entity, "metadata", None) or {}).get("etag")
        return record


def get_or_none(client: Any, partition_key: str, row_key: str) -> Any | None:
    """The entity, or None when the row does not exist (one point read)."""
    try:
        with storage_errors():
            return client.get_entity(partition_key, row_key)
    except NotFound:
        return None


def create_if_absent(client: Any, entity: dict[str, Any]) -> bool:
    """Create the row; False when it exists already."""
    try:
        with storage_errors():
            client.create_entity(entity)
    except Conflict:
        return False
    return True


def delete_if_present(client: Any, partition_key: str, row_key: str) -> None:
    """Delete the row, whatever it holds; a row that is already gone is fine."""
    try:
        with storage_errors():
            client.delete_entity(partition_key, row_key)
    except NotFound:
        pass


def query(client: Any, filter: str, **kwargs: Any) -> Iterator[Any]:
    """The entities of a query, fetched page by page as they are consumed (errors translated as they come)."""
    with storage_errors():
        yield from client.query_entities(filter, **kwargs)


def update_if_unchanged(client: Any, entity: dict[str, Any], etag: str | None, *,
                        merge: bool = False) -> dict[str, Any] | None:
    """Replace (or merge into) the row read with ``etag``; the answer's metadata (its new ``etag``), or None
    when someone changed or deleted the row meanwhile."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    try:
        with storage_errors():
            result = client.update_entity(entity, mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE,
                                          etag=etag, match_condition=MatchConditions.IfNotModified)
    except (Conflict, NotFound):
        return None
    return result or {}


def delete_if_unchanged(client: Any, partition_key: str, row_key: str, etag: str | None) -> bool:
    """Delete the row read with ``etag``; False when someone rewrote it meanwhile (the SDK reports a row that
    is already gone as deleted)."""
    from azure.core import MatchConditions

    try:
        with storage_errors():
            client.delete_entity(partition_key, row_key, etag=etag, match_condition=MatchConditions.IfNotModified)
    except (Conflict, NotFound):
        return False
    return True
