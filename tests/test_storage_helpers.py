"""The storage habits of issue #11, in milliseconds (no Azurite):

* SDK failures become the project's own once, at the storage boundary (``shared.storage.errors``): ``NotFound``,
  ``Conflict``, ``StorageUnavailable``; the HTTP edge answers ``StorageUnavailable`` with the same 503 and
  ``Retry-After`` as a raw transient SDK failure.
* The point-call helpers of ``shared.storage.tables.records`` and the one optimistic-concurrency loop
  (``shared.storage.tables.concurrency.change_row``): a lost ETag race re-reads and retries, bounded retries give
  up the way each caller expects (503 ``Busy``, or "not changed").

``FakeTable`` implements only the calls these helpers make, with Table Storage's ETag rules and the SDK's
exception classes; the table modules themselves are tested against real Azurite by the rest of the suite.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableTransactionError, UpdateMode

from shared.errors import Busy, is_transient
from shared.storage.errors import Conflict, NotFound, StorageError, StorageUnavailable, storage_errors, translate
from shared.storage.tables.concurrency import ATTEMPTS, ConcurrentChange, change_row
from shared.storage.tables.records import (
    create_if_absent,
    delete_if_present,
    delete_if_unchanged,
    get_or_none,
    query,
    update_if_unchanged,
)

# --- a tiny Table client ------------------------------------------------------------------------------


class Entity(dict):
    """What ``get_entity`` returns: the properties, and ``metadata["etag"]``."""

    def __init__(self, data: dict[str, Any], etag: str) -> None:
        super().__init__(data)
        self.metadata = {"etag": etag}


class FakeTable:
    """One table in memory with ETags. ``before_write`` runs before each write (a concurrent writer);
    ``failures[call]`` is raised by the next such call instead of its answer (a storage failure)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self.calls: list[str] = []
        self.before_write: Callable[[], None] | None = None
        self.failures: dict[str, BaseException] = {}
        self._etags = itertools.count(1)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        failure = self.failures.pop(name, None)
        if failure is not None:
            raise failure

    def _write(self, key: tuple[str, str], data: dict[str, Any]) -> dict[str, Any]:
        etag = f'W/"{next(self._etags)}"'
        self.rows[key] = (data, etag)
        return {"etag": etag}

    def _interfere(self) -> None:
        if self.before_write is not None:
            self.before_write()

    def put(self, entity: dict[str, Any]) -> str:
        """A write by someone else (not counted as a call): the row's new ETag."""
        return self._write((entity["PartitionKey"], entity["RowKey"]), dict(entity))["etag"]

    def get_entity(self, partition_key: str, row_key: str) -> Entity:
        self._call("get")
        row = self.rows.get((partition_key, row_key))
        if row is None:
            raise ResourceNotFoundError("The specified resource does not exist.")
        return Entity(*row)

    def create_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        self._call("create")
        self._interfere()
        key = (entity["PartitionKey"], entity["RowKey"])
        if key in self.rows:
            raise ResourceExistsError("The specified entity already exists.")
        return self._write(key, dict(entity))

    def update_entity(self, entity: dict[str, Any], mode: UpdateMode, etag: str,
                      match_condition: MatchConditions) -> dict[str, Any]:
        assert match_condition == MatchConditions.IfNotModified  # the helpers only write under an ETag
        self._call("update")
        self._interfere()
        key = (entity["PartitionKey"], entity["RowKey"])
        if key not in self.rows:
            raise ResourceNotFoundError("The specified resource does not exist.")
        data, current = self.rows[key]
        if current != etag:
            raise ResourceModifiedError("The update condition specified in the request was not satisfied.")
        return self._write(key, {**data, **entity} if mode == UpdateMode.MERGE else dict(entity))

    def delete_entity(self, partition_key: str, row_key: str, *, etag: str | None = None,
                      match_condition: MatchConditions | None = None) -> None:
        self._call("delete")
        self._interfere()
        row = self.rows.get((partition_key, row_key))
        if row is None:
            raise ResourceNotFoundError("The specified resource does not exist.")
        if match_condition == MatchConditions.IfNotModified and row[1] != etag:
            raise ResourceModifiedError("The update condition specified in the request was not satisfied.")
        del self.rows[(partition_key, row_key)]

    def query_entities(self, filter: str, **kwargs: Any) -> Iterator[Entity]:
        self._call("query")
        for count, (data, etag) in enumerate(list(self.rows.values())):
            if count:
                self._call("next")  # (one row a page)
            yield Entity(data, etag)


def http_error(status: int, cls: type[HttpResponseError] = HttpResponseError, **attrs: Any) -> HttpResponseError:
    exc = cls(message=f"HTTP {status}")
    exc.status_code = status
    for name, value in attrs.items():
        setattr(exc, name, value)
    return exc


@pytest.fixture
def fake() -> FakeTable:
    return FakeTable()


# --- translation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("raised, expected", [
    (ResourceNotFoundError("gone"), NotFound),
    (ResourceExistsError("there"), Conflict),
    (ResourceModifiedError("etag"), Conflict),
    (http_error(412), Conflict),
    (http_error(404, TableTransactionError), NotFound),  # a transaction's row went away
    (http_error(412, TableTransactionError), Conflict),  # a transaction's ETag lost
    (http_error(409, TableTransactionError, error_code="EntityAlreadyExists"), Conflict),
    (ServiceRequestError("connection refused"), StorageUnavailable),
    (ServiceResponseError("read timed out"), StorageUnavailable),
    (ConnectionResetError("reset"), StorageUnavailable),
    (TimeoutError("timed out"), StorageUnavailable),
    (http_error(500), StorageUnavailable),
    (http_error(503), StorageUnavailable),
    (http_error(429), StorageUnavailable),
    (http_error(503, TableTransactionError), StorageUnavailable),
])
def test_sdk_failures_become_the_projects_own(raised: BaseException, expected: type[StorageError]) -> None:
    assert type(translate(raised)) is expected
    with pytest.raises(expected) as caught, storage_errors():
        raise raised
    assert caught.value.__cause__ is raised  # the SDK's error stays in the traceback


@pytest.mark.parametrize("raised", [http_error(400), http_error(403, ClientAuthenticationError),
                                    ValueError("a bug"), KeyError("x")])
def test_other_failures_are_left_as_they_are(raised: BaseException) -> None:
    assert translate(raised) is raised
    with pytest.raises(type(raised)) as caught, storage_errors():
        raise raised
    assert caught.value is raised


def test_an_own_error_passes_through_unchanged() -> None:
    own = Conflict("lost")
    assert translate(own) is own
    with pytest.raises(Conflict) as caught, storage_errors():
        raise own
    assert caught.value is own


def test_only_storage_unavailable_is_transient() -> None:
    assert is_transient(StorageUnavailable("down"))
    assert not is_transient(NotFound("gone")) and not is_transient(Conflict("lost"))
    assert is_transient(ServiceRequestError("down"))  # raw SDK failures (not through the helpers) still are


def _answer(failure: BaseException) -> func.HttpResponse:
    from shared.web.http import call_api

    def handler(req: func.HttpRequest) -> func.HttpResponse:
        raise failure

    return call_api(handler, func.HttpRequest("GET", "http://localhost/api/v1/accounts", body=b""), None)


def test_storage_unavailable_answers_503_with_retry_after_like_a_raw_sdk_failure() -> None:
    own, raw = _answer(translate(ServiceRequestError("down"))), _answer(ServiceRequestError("down"))
    assert own.status_code == raw.status_code == 503
    assert own.headers["Retry-After"] == raw.headers["Retry-After"]
    assert json.loads(own.get_body()) == json.loads(raw.get_body()) == {
        "statusCode": 503, "error": "Service Unavailable", "code": "unavailable",
        "message": "a storage dependency is temporarily unavailable; retry later"}


def test_a_storage_not_found_that_escapes_is_still_a_500() -> None:
    assert _answer(NotFound("gone")).status_code == 500  # a bug: a caller should have handled it


# --- point calls ----------------------------------------------------------------------------------------

def test_get_or_none(fake: FakeTable) -> None:
    assert get_or_none(fake, "p", "r") is None
    etag = fake.put({"PartitionKey": "p", "RowKey": "r", "n": 1})
    entity = get_or_none(fake, "p", "r")
    assert entity["n"] == 1 and entity.metadata["etag"] == etag
    fake.failures["get"] = ServiceResponseError("read timed out")
    with pytest.raises(StorageUnavailable):
        get_or_none(fake, "p", "r")


def test_create_if_absent_and_delete_if_present(fake: FakeTable) -> None:
    row = {"PartitionKey": "p", "RowKey": "r"}
    assert create_if_absent(fake, row) is True
    assert create_if_absent(fake, row) is False
    delete_if_present(fake, "p", "r")
    delete_if_present(fake, "p", "r")  # already gone: fine
    assert fake.rows == {}
    fake.failures["create"] = http_error(503)
    with pytest.raises(StorageUnavailable):
        create_if_absent(fake, row)


def test_conditional_writes_lose_to_a_changed_or_deleted_row(fake: FakeTable) -> None:
    old = fake.put({"PartitionKey": "p", "RowKey": "r", "n": 1})
    new = fake.put({"PartitionKey": "p", "RowKey": "r", "n": 2})
    assert update_if_unchanged(fake, {"PartitionKey": "p", "RowKey": "r", "n": 3}, old) is None
    assert delete_if_unchanged(fake, "p", "r", old) is False
    result = update_if_unchanged(fake, {"PartitionKey": "p", "RowKey": "r", "m": 3}, new, merge=True)
    assert result is not None and fake.rows[("p", "r")] == ({"PartitionKey": "p", "RowKey": "r", "n": 2, "m": 3},
                                                             result["etag"])
    assert delete_if_unchanged(fake, "p", "r", result["etag"]) is True
    assert update_if_unchanged(fake, {"PartitionKey": "p", "RowKey": "r"}, result["etag"]) is None  # gone
    assert delete_if_unchanged(fake, "p", "r", result["etag"]) is False


def test_query_translates_a_failure_of_a_later_page(fake: FakeTable) -> None:
    for n in range(3):
        fake.put({"PartitionKey": "p", "RowKey": str(n)})
    rows = query(fake, "PartitionKey eq 'p'")
    assert next(rows)["RowKey"] == "0"
    fake.failures["next"] = ServiceRequestError("reset")
    with pytest.raises(StorageUnavailable):
        next(rows)


# --- the optimistic-concurrency loop --------------------------------------------------------------------

KEY = {"PartitionKey": "acct", "RowKey": ""}


def counter_update(fake: FakeTable, **loop: Any) -> dict[str, Any] | None:
    """Read the row, add one to ``n``, write it back under the ETag it was read with."""

    def change(entity: Entity | None) -> tuple[dict[str, Any], str] | None:
        if entity is None:
            return None
        return {**entity, "n": entity["n"] + 1}, entity.metadata["etag"]

    written = change_row(lambda: get_or_none(fake, "acct", ""), change,
                         lambda update: update_if_unchanged(fake, *update) is not None, **loop)
    return None if written is None else written[0]


def test_the_happy_path_is_one_read_and_one_write(fake: FakeTable) -> None:
    fake.put({**KEY, "n": 1})
    assert counter_update(fake) == {**KEY, "n": 2}
    assert fake.calls == ["get", "update"]


def test_a_lost_etag_race_rereads_and_keeps_both_changes(fake: FakeTable) -> None:
    fake.put({**KEY, "n": 1})
    others = iter([lambda: fake.put({**KEY, "n": 10})])  # another writer, once, between our read and write
    fake.before_write = lambda: next(others, lambda: None)()
    assert counter_update(fake) == {**KEY, "n": 11}  # our change applied to the other writer's row
    assert fake.calls == ["get", "update", "get", "update"]
    assert fake.rows[("acct", "")][0]["n"] == 11


def test_bounded_retries_give_up_with_concurrent_change_and_write_nothing(fake: FakeTable) -> None:
    fake.put({**KEY, "n": 1})
    bumps = itertools.count(100)
    fake.before_write = lambda: fake.put({**KEY, "n": next(bumps)})  # someone always gets there first
    with pytest.raises(ConcurrentChange) as caught:
        counter_update(fake, attempts=3)
    assert isinstance(caught.value, Conflict)
    assert fake.calls == ["get", "update"] * 3
    assert fake.rows[("acct", "")][0]["n"] == 102  # only the other writer's rows
    fake.calls.clear()
    with pytest.raises(ConcurrentChange):
        counter_update(fake)
    assert len(fake.calls) == 2 * ATTEMPTS


def test_a_change_that_declines_writes_nothing(fake: FakeTable) -> None:
    assert counter_update(fake) is None  # no row
    assert fake.calls == ["get"]


def test_a_failing_read_or_write_is_not_retried(fake: FakeTable) -> None:
    fake.put({**KEY, "n": 1})
    fake.failures["get"] = http_error(503)
    with pytest.raises(StorageUnavailable):
        counter_update(fake)
    assert fake.calls == ["get"]
    fake.calls.clear()
    fake.failures["update"] = ServiceResponseError("read timed out")
    with pytest.raises(StorageUnavailable):
        counter_update(fake)  # the write's answer was lost: the caller decides (e.g. read back), not the loop
    assert fake.calls == ["get", "update"]


def test_insert_first_then_replace_when_someone_created_the_row(fake: FakeTable) -> None:
    """The sign-in's commit: try an insert without reading; when the row exists, read it and replace it."""
    waits: list[int] = []

    def change(entity: Entity | None) -> tuple[str, dict[str, Any], str | None]:
        if entity is None:
            return "new", {**KEY, "n": 1}, None
        return "existing", {**entity, "n": entity["n"] + 1}, entity.metadata["etag"]

    def write(commit: tuple[str, dict[str, Any], str | None]) -> bool:
        state, row, etag = commit
        if state == "new":
            return create_if_absent(fake, row)
        return update_if_unchanged(fake, row, etag) is not None

    def commit() -> str:
        written = change_row(lambda: get_or_none(fake, "acct", ""), change, write, first=lambda: None,
                             pause=waits.append)
        assert written is not None
        return written[0]

    assert commit() == "new" and fake.calls == ["create"]  # a new row: one write, no read
    fake.calls.clear()
    assert commit() == "existing" and fake.calls == ["create", "get", "update"]
    assert fake.rows[("acct", "")][0]["n"] == 2 and waits == [1]


# --- the callers: how each gives up -----------------------------------------------------------------------

def _account(**changes: Any) -> Any:
    from shared.storage.tables.accounts import Account

    now = datetime(2024, 1, 1, tzinfo=UTC)
    account = Account(account="acct1", email="a@contoso.com", appId="app", credentialId="cred",
                      signerUpn="a@contoso.com", signerTid="tid", signerOid="oid", created=now, updated=now, **changes)
    account.etag = 'W/"1"'
    return account


class Accounts:
    """``shared.storage.tables.accounts``' row calls: every write loses its race the first ``lose`` times."""

    def __init__(self, lose: int) -> None:
        self.lose = lose
        self.reads = self.writes = 0
        self.written: list[tuple[Any, list[Any]]] = []

    def get_account(self, account_id: str) -> Any:
        self.reads += 1
        return _account()

    def replace_account(self, account: Any, events: Any = (), **options: Any) -> bool:
        self.writes += 1
        if self.writes <= self.lose:
            return False
        self.written.append((account, list(events)))
        return True

    delete_account = replace_account


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from shared.core import events

    sent: list[Any] = []
    monkeypatch.setattr(events, "publish", lambda produced: sent.extend(produced))
    return sent


def _patch(monkeypatch: pytest.MonkeyPatch, lose: int) -> Accounts:
    from shared.storage.tables import accounts

    fake = Accounts(lose)
    for name in ("get_account", "replace_account", "delete_account"):
        monkeypatch.setattr(accounts, name, getattr(fake, name))
    return fake


def test_account_state_retries_then_says_not_changed(monkeypatch: pytest.MonkeyPatch, published: list[Any]) -> None:
    from shared.core import account_state, events

    def to_error(account: Any) -> Any:
        return account.model_copy(update={"state": "authenticationError", "errorCode": "invalid_grant"})

    def event(before: Any, after: Any) -> Any:
        return events.authentication_error(after, "invalid_grant", "expired", [after.account])

    fake = _patch(monkeypatch, lose=2)
    assert account_state.update_account("acct1", "cred", to_error, event) is True
    assert (fake.reads, fake.writes) == (3, 3) and len(published) == 1  # the event of the write that landed
    assert fake.written[0][1] == published

    fake = _patch(monkeypatch, lose=10**6)
    published.clear()
    assert account_state.update_account("acct1", "cred", to_error, event) is False
    assert (fake.reads, fake.writes) == (ATTEMPTS, ATTEMPTS) and published == []

    fake = _patch(monkeypatch, lose=0)
    assert account_state.update_account("acct1", "other-credential", to_error, event) is False  # re-bound
    assert (fake.reads, fake.writes) == (1, 0)


def test_the_management_api_gives_up_with_a_503(monkeypatch: pytest.MonkeyPatch, published: list[Any]) -> None:
    from shared.admin import accounts as admin
    from shared.core.access import UNRESTRICTED
    from shared.schemas import AccountUpdate

    fake = _patch(monkeypatch, lose=1)
    assert admin.update_account("acct1", AccountUpdate(name="Renamed"), caller=UNRESTRICTED).name == "Renamed"
    assert (fake.reads, fake.writes) == (2, 2)

    _patch(monkeypatch, lose=10**6)
    for attempt in (lambda: admin.update_account("acct1", AccountUpdate(name="Renamed"), caller=UNRESTRICTED),
                    lambda: admin.delete_account("acct1", None, caller=UNRESTRICTED)):
        with pytest.raises(Busy) as caught:
            attempt()
        assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
    assert published == []  # a deletion that never landed announces nothing


def test_the_sign_in_commit_inserts_first_and_gives_up_as_busy(monkeypatch: pytest.MonkeyPatch,
                                                                 published: list[Any]) -> None:
    from shared.signin import flow
    from shared.storage.tables import accounts

    monkeypatch.setattr(flow.time, "sleep", lambda seconds: None)
    fake = _patch(monkeypatch, lose=10**6)
    inserts: list[Any] = []

    def insert_account(account: Any, events: Any = (), **options: Any) -> bool:
        inserts.append(account)
        return False  # the row exists already

    monkeypatch.setattr(accounts, "insert_account", insert_account)
    with pytest.raises(Busy):
        flow._commit_account(_account())
    assert len(inserts) == 1 and fake.reads == fake.writes == flow.COMMIT_ATTEMPTS - 1 and published == []

    fake = _patch(monkeypatch, lose=0)
    state, previous = flow._commit_account(_account(name="New name"))
    assert state == "existing" and previous is not None and previous.name is None
    assert (fake.reads, fake.writes) == (1, 1) and [e.event for e in published] == ["authenticationSuccess"]
