"""Row models of the tables, with the conversion to and from Table entities in one place."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Record(BaseModel):
    """Base row: JSON-typed fields are stored as strings; ``etag`` comes back from reads."""

    model_config = ConfigDict(extra="ignore", defer_build=True)  # built on first use: a request uses a few
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ()
    etag: Optional[str] = Field(None, exclude=True)

    def to_entity(self, partition_key: str, row_key: str = "") -> dict[str, Any]:
        entity: dict[str, Any] = {"PartitionKey": partition_key, "RowKey": row_key}
        for key, value in self.model_dump(mode="python", exclude={"etag"}).items():
            if value is None:
                continue
            entity[key] = json.dumps(value, separators=(",", ":")) if key in self.JSON_FIELDS else value
        return entity

    @classmethod
    def from_entity(cls, entity: Any) -> "Record":
        data = {k: v for k, v in dict(entity).items() if k not in ("PartitionKey", "RowKey")}
        for key in cls.JSON_FIELDS:
            if isinstance(data.get(key), str):
                data[key] = json.loads(data[key])
        record = cls.model_validate(data)
        record.etag = (getattr(entity, "metadata", None) or {}).get("etag")
        return record


def is_missing(exc: BaseException) -> bool:
    return type(exc).__name__ == "ResourceNotFoundError"


def is_conflict(exc: BaseException) -> bool:
    return type(exc).__name__ == "ResourceExistsError"


def is_precondition_failed(exc: BaseException) -> bool:
    """A write conditioned on an ETag lost the race (412) or the row went away meanwhile (404)."""
    return type(exc).__name__ in ("ResourceModifiedError", "ResourceNotFoundError") or (
        getattr(exc, "status_code", None) == 412
    )


def update_if_unchanged(client: Any, entity: dict[str, Any], etag: Optional[str], *,
                        merge: bool = False) -> Optional[dict[str, Any]]:
    """Replace (or merge into) the row read with ``etag``; the answer's metadata (its new ``etag``), or None
    when someone changed or deleted the row meanwhile."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    try:
        result = client.update_entity(entity, mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE, etag=etag,
                                      match_condition=MatchConditions.IfNotModified)
    except Exception as exc:
        if is_precondition_failed(exc):
            return None
        raise
    return result or {}


def delete_if_unchanged(client: Any, partition_key: str, row_key: str, etag: Optional[str]) -> bool:
    """Delete the row read with ``etag``; False when someone rewrote it meanwhile (the SDK reports a row that
    is already gone as deleted)."""
    from azure.core import MatchConditions

    try:
        client.delete_entity(partition_key, row_key, etag=etag, match_condition=MatchConditions.IfNotModified)
    except Exception as exc:
        if is_precondition_failed(exc):
            return False
        raise
    return True
