"""The principal-to-account index, partitioned by credential.

Per credential: one ``credential`` row (signer, tenant, scopes, when the refresh token was last written)
and one ``account:<id>`` row per account it reaches. Row keys make each (credential, account) pair
unique by construction, so writing an index row is an idempotent upsert.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from shared.storage.errors import NotFound, storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, delete_if_unchanged, get_or_none, query, update_if_unchanged

TABLE = "principals"
CREDENTIAL_ROW = "credential"
ACCOUNT_PREFIX = "account:"
SECRET_PREFIX = "rt-"


class Credential(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("scopes", "accessTokens")
    credentialId: str
    appId: str
    tid: str
    oid: str
    upn: str
    name: str | None = None
    scopes: list[str] = []
    # Where the refresh token is (shared.storage.sealed): the secret-store name (keyvault mode), or sealed here
    # (envelope mode; secretName is then "").
    secretName: str = ""
    sealedRefreshToken: str | None = None
    tokenWrittenAt: datetime
    # The access-token cache every instance shares (issue 14, point 4; shared.handoff.tokens): per scope set
    # (``scope_key``), the sealed access token, its expiry (epoch seconds) and the scopes granted.
    accessTokens: dict[str, dict[str, Any]] = {}
    # An instance refreshing this credential: its claim (random) and until when (epoch seconds); written under
    # the row's ETag, so one instance at a time calls Microsoft for it.
    refreshClaim: str | None = None
    refreshClaimUntil: float | None = None
    # Set by the keep-alive (shared.handoff.keepalive) when only a new sign-in can help; a sign-in replaces the row
    # without it, and the keep-alive skips the credential until then.
    keepAliveAt: datetime | None = None
    # Set when Microsoft refused the refresh token (invalid_grant, ...; ``flag_broken``): the keep-alive
    # skips the credential, and the next sign-in (which replaces the row without it) flips the
    # credential's accounts back to connected.
    brokenCode: str | None = None

    @property
    def broken(self) -> bool:
        return bool(self.brokenCode)


def secret_name(credential_id: str) -> str:
    """The secret-store name of a credential's refresh token (keyvault mode)."""
    return f"{SECRET_PREFIX}{credential_id}"


def refresh_aad(credential_id: str) -> str:
    """The associated data of a credential's sealed refresh token (``shared.storage.sealed``)."""
    return f"rt:{credential_id}"


class IndexRow(Record):
    accountId: str
    mailbox: str


def bind(credential: Credential, account_id: str, mailbox: str) -> tuple[str | None, str | None]:
    """A sign-in's writes of this partition in one entity-group transaction: the credential row, whole (replacing a
    previous one: its cached access tokens and refresh claim go with it), and the (credential, account) index
    row. Both land or neither, so an ``unbind`` racing it sees the pair or nothing. Returns the ETags
    of the credential row and of the index row."""
    from azure.data.tables import UpdateMode

    index = IndexRow(accountId=account_id, mailbox=mailbox)
    with storage_errors():
        results = table(TABLE).submit_transaction([
            ("upsert", credential.to_entity(credential.credentialId, CREDENTIAL_ROW), {"mode": UpdateMode.REPLACE}),
            ("upsert", index.to_entity(credential.credentialId, ACCOUNT_PREFIX + account_id),
             {"mode": UpdateMode.REPLACE}),
        ])
    etags = [(r or {}).get("etag") for r in results or ()] + [None, None]
    return etags[0], etags[1]


def change_credential(credential: Credential, fields: dict[str, Any]) -> str | None:
    """Merge ``fields`` into the row read as ``credential`` (its ETag); the row's new ETag, or None when it
    changed or went away meanwhile (a sign-in, another instance's claim, an unbind). ``None`` values clear."""
    entity: dict[str, Any] = {"PartitionKey": credential.credentialId, "RowKey": CREDENTIAL_ROW}
    for key, value in fields.items():
        if key in Credential.JSON_FIELDS and value is not None:
            value = json.dumps(value, separators=(",", ":"))
        entity[key] = value
    if any(v is None for v in entity.values()):  # MERGE cannot remove a property: rewrite the row whole
        merged = credential.model_copy(update=fields)
        result = update_if_unchanged(table(TABLE), merged.to_entity(credential.credentialId, CREDENTIAL_ROW),
                                     credential.etag)
    else:
        result = update_if_unchanged(table(TABLE), entity, credential.etag, merge=True)
    return None if result is None else result.get("etag")


def upsert_credential(credential: Credential) -> str | None:
    """Write the row whole; returns its new ETag."""
    from azure.data.tables import UpdateMode

    with storage_errors():
        result = table(TABLE).upsert_entity(credential.to_entity(credential.credentialId, CREDENTIAL_ROW),
                                            mode=UpdateMode.REPLACE)
    return (result or {}).get("etag")


def flag_broken(credential_id: str, code: str, *, release_claim: bool = True) -> str | None:
    """Note on the credential row that only a new sign-in can repair it, and release any refresh claim (the
    refresh that failed held it); returns the row's new ETag (None when the row is missing: it is left missing)."""
    from azure.data.tables import UpdateMode

    entity: dict[str, Any] = {"PartitionKey": credential_id, "RowKey": CREDENTIAL_ROW, "brokenCode": code}
    if release_claim:
        entity.update(refreshClaim="", refreshClaimUntil=0.0)
    try:
        with storage_errors():
            result = table(TABLE).update_entity(entity, mode=UpdateMode.MERGE)
    except NotFound:
        return None
    return (result or {}).get("etag")


def get_credential(credential_id: str) -> Credential | None:
    entity = get_or_none(table(TABLE), credential_id, CREDENTIAL_ROW)
    return None if entity is None else Credential.from_entity(entity)


def add_account(credential_id: str, account_id: str, mailbox: str) -> None:
    from azure.data.tables import UpdateMode

    row = IndexRow(accountId=account_id, mailbox=mailbox)
    with storage_errors():
        table(TABLE).upsert_entity(row.to_entity(credential_id, ACCOUNT_PREFIX + account_id), mode=UpdateMode.REPLACE)


def remove_account(credential_id: str, account_id: str, etag: str | None = None) -> bool:
    """Delete the index row (only as read or written with ``etag``, when given); False when it had changed."""
    if etag is not None:
        return delete_if_unchanged(table(TABLE), credential_id, ACCOUNT_PREFIX + account_id, etag)
    with storage_errors():
        table(TABLE).delete_entity(credential_id, ACCOUNT_PREFIX + account_id)
    return True


def index_rows(credential_id: str) -> list[IndexRow]:
    """The credential's (credential, account) index rows, with the mailbox each was written with."""
    where = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
    params = {"pk": credential_id, "lo": ACCOUNT_PREFIX, "hi": ACCOUNT_PREFIX[:-1] + chr(ord(ACCOUNT_PREFIX[-1]) + 1)}
    return [IndexRow.from_entity(row) for row in query(table(TABLE), where, parameters=params)]


def account_ids(credential_id: str) -> list[str]:
    where = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
    params = {"pk": credential_id, "lo": ACCOUNT_PREFIX, "hi": ACCOUNT_PREFIX[:-1] + chr(ord(ACCOUNT_PREFIX[-1]) + 1)}
    rows = query(table(TABLE), where, parameters=params, select=["accountId"])
    return [row["accountId"] for row in rows]


def delete_credential_row(credential: Credential) -> bool:
    """Delete the credential row only if nobody rewrote it since ``credential`` was read."""
    return delete_if_unchanged(table(TABLE), credential.credentialId, CREDENTIAL_ROW, credential.etag)


# --- keep-alive (shared.handoff.keepalive) ----------------------------------------------------------------------

def stale_credentials(written_before: datetime) -> Iterator[Credential]:
    """Credential rows whose refresh token was last written before ``written_before``, oldest partitions
    first (a filtered scan of the table; the keep-alive takes a bounded number per run)."""
    rows = query(table(TABLE), "RowKey eq @row and tokenWrittenAt lt @before",
                 parameters={"row": CREDENTIAL_ROW, "before": written_before})
    for entity in rows:
        yield Credential.from_entity(entity)


def clear_broken(credential_id: str) -> None:
    """The credential works again (a refresh succeeded): drop ``brokenCode``; a missing row stays missing."""
    flag_broken(credential_id, "", release_claim=False)


def mark_keep_alive_failed(credential: Credential, at: datetime) -> bool:
    """Record a failed keep-alive on the row read as ``credential`` (its ETag), so it waits before the
    next try. False when a sign-in rewrote the row meanwhile."""
    entity = {"PartitionKey": credential.credentialId, "RowKey": CREDENTIAL_ROW, "keepAliveAt": at}
    return update_if_unchanged(table(TABLE), entity, credential.etag, merge=True) is not None


def all_credentials() -> Iterator[Credential]:
    """Every credential row (a filtered scan: ``shared.core.secret_placement`` migrates them)."""
    for entity in query(table(TABLE), "RowKey eq @row", parameters={"row": CREDENTIAL_ROW}):
        yield Credential.from_entity(entity)


# --- the sweeper (shared.core.sweeper) -----------------------------------------------------------------------

def credentials_after(start: str, written_before: datetime) -> Iterator[Credential]:
    """Credential rows with an id after ``start`` whose refresh token was written before ``written_before``, in
    id order (a filtered scan the sweeper takes a bounded number of per run, resuming where it stopped)."""
    rows = query(table(TABLE), "PartitionKey gt @start and RowKey eq @row and tokenWrittenAt lt @before",
                 parameters={"start": start, "row": CREDENTIAL_ROW, "before": written_before})
    for entity in rows:
        yield Credential.from_entity(entity)
