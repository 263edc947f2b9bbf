"""Fan-out, claims, attempts, backoff and dead letters of webhook deliveries (design: ``shared.webhooks``).

Time comes from an injectable clock (``Dispatcher(clock=...)``), so the whole 24-hour schedule is tested
without waiting.

Account counts (``GET /v1/accounts``'s ``total``, ``shared.storage.tables.counts``): a run syncs the count of every
account whose events it processes (``sync_counts``: once per account per run, after the fan-out, also when the
fan-out failed part-way, and also for the sweeper's events). The sign-in callback does not sync its account's count
(4 Table requests fewer on the hot path): every sign-in writes events in the same transaction as the account row,
so the run that processes them (at least once, with or without webhook targets: the event rows are fanned out to
no one and deleted) counts the account, at most ~10 s after the sign-in. A sync is idempotent and convergent, so
processing an event twice, or syncing an account another writer synced already, changes nothing. A run lost
altogether leaves the count to the storage sweeper's reconciliation (``accounts.reconcile_counts``).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.core import account_state
from shared.core import events as ev
from shared.errors import ApiError
from shared.settings import Settings
from shared.storage.secrets.base import SecretNotFound
from shared.storage.tables import accounts, deliveries, outbox
from shared.storage.tables.deliveries import DEAD, PENDING, Delivery
from shared.storage.tables.outbox import EventRow
from shared.storage.tables.records import utcnow
from shared.webhooks.signature import (
    EE_ATTEMPTS_HEADER,
    EE_EVENT_ID_HEADER,
    EE_SIGNATURE_HEADER,
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    sign_ee,
)
from shared.webhooks.targets import Target, all_targets, secret_of

if TYPE_CHECKING:  # pragma: no cover
    import requests

log = logging.getLogger("mailbox_connect.webhooks")

MAX_AGE = timedelta(hours=24)  # retry window of a delivery; a failure after it makes a dead letter
BASE_DELAY = 10.0  # seconds before the first retry; doubles per attempt
MAX_DELAY = 3600.0  # the longest wait between two attempts
JITTER = 0.1  # up to 10 % less than the nominal delay, so retries of many rows spread out
CLAIM = timedelta(minutes=2)  # a claimed row is invisible to other runners this long
SWEEP_GRACE = timedelta(minutes=2)  # the sweeper leaves younger event rows to the fast path
RUN_BUDGET = 45.0  # seconds one run may spend starting attempts (+ one TIMEOUT: inside functionTimeout, 2 min)
TIMEOUT = (5.0, 10.0)  # connect, read
MAX_WORKERS = 8  # targets sent to in parallel
USER_AGENT = "MailboxConnect-Webhooks/1"


Clock = Callable[[], datetime]


# --- the dispatcher ---------------------------------------------------------------------------------------

@dataclass
class RunReport:
    fanned_out: int = 0  # events handed to the targets
    delivered: int = 0
    failed: int = 0  # attempts that failed and will be retried
    dead: int = 0  # attempts that failed for good (dead letters)
    dropped: int = 0  # rows of targets that no longer exist
    counted: int = 0  # accounts whose count the run synced (one whose row is gone: nothing to do; module docstring)


@dataclass
class Dispatcher:
    """One run of the delivery machinery. ``clock`` is the time of attempts, backoff and the retry window."""

    settings: Settings
    clock: Clock = utcnow
    rng: Callable[[], float] = random.random
    session: requests.Session | None = None
    budget: float = RUN_BUDGET
    report: RunReport = field(default_factory=RunReport)

    def __post_init__(self) -> None:
        if self.session is None:  # loopback targets only in local development (shared.webhooks.transport)
            self.session = _shared_session(loopback=not self.settings.in_azure)

    # -- the timer functions

    def run(self) -> RunReport:
        """``webhook_delivery``: fan out what the fast path listed, then send what is due."""
        self.fan_out_pending()
        self.deliver_due()
        return self.report

    def fan_out_pending(self, limit: int = 500) -> int:
        pending = outbox.pending(limit)
        if not pending:
            return 0
        seen: list[str] = []  # the accounts of the events processed: their counts are synced after the fan-out
        signed_in: list[str] = []  # ... and those a sign-in committed: their credential's other accounts
        try:
            targets = all_targets(self.settings)
            for event_id, index in pending:
                event = outbox.get_event(index.eventPk, index.eventRk)
                if event is not None:
                    self._fan_out(event, targets)
                    if _signed_in(event):
                        signed_in.append(event.account)
                seen.append(index.eventPk)  # also when gone: an earlier run may have stopped before its sync
                outbox.remove_index(event_id)
        finally:
            self.sync_counts(seen)
            self.reconnect(signed_in)
        return len(pending)

    def sweep(self, limit: int = 1000) -> int:
        """``webhook_sweeper``: event rows the fast path missed (older than ``SWEEP_GRACE``)."""
        found = list(outbox.scan_events(self.clock() - SWEEP_GRACE, limit))
        if found:
            log.warning("sweeper: %d event(s) had no outbox index row (lost fast-path write); fanning out",
                        len(found))
            seen: list[str] = []
            try:
                targets = all_targets(self.settings)
                for event in found:
                    self._fan_out(event, targets)
                    seen.append(event.account)
                    outbox.remove_index(event.id)
            finally:
                self.sync_counts(seen)
                self.reconnect([e.account for e in found if _signed_in(e)])
        return len(found)

    def sync_counts(self, account_ids: Iterable[str]) -> int:
        """Sync the account count of each account once (``accounts.sync_count``: best effort, never raises), up
        to ``MAX_WORKERS`` at a time; how many accounts. See the module docstring for why."""
        ids = list(dict.fromkeys(account_ids))
        if len(ids) == 1:
            accounts.sync_count(ids[0])
        elif ids:
            with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(ids)), thread_name_prefix="counts") as pool:
                list(pool.map(accounts.sync_count, ids))
        with _report_lock:
            self.report.counted += len(ids)
        return len(ids)

    def reconnect(self, account_ids: Iterable[str]) -> int:
        """After a sign-in: the other accounts of its credential marked ``authenticationError`` work again (the
        sign-in stored a refresh token that works). The callback does this itself only for the account it
        repaired (it no longer reads the old credential row: issue 14, point 5); the rest is done here, off
        the hot path (``account_state.mark_connected``: best effort, never raises). How many accounts flipped."""
        flipped = 0
        for account_id in dict.fromkeys(account_ids):
            try:
                account = accounts.get_account(account_id)
            except Exception as exc:  # noqa: BLE001 - the token endpoint heals such accounts on their next request
                log.warning("account %s: could not read it to reconnect its credential (%s)", account_id,
                            type(exc).__name__)
                continue
            if account is not None:
                flipped += account_state.mark_connected(account.credentialId)
        return flipped

    # -- fan-out

    def _fan_out(self, event: EventRow, targets: list[Target]) -> None:
        wanted = [t for t in targets if t.wants(event.event)]
        if wanted:
            body = json.dumps(self._payload(event), separators=(",", ":"), ensure_ascii=False)
            now = self.clock()
            for target in wanted:
                deliveries.create(Delivery(target=target.id, eventId=event.id, event=event.event,
                                           account=event.account, body=body, created=now, nextAttemptAt=now))
        outbox.delete_event(event.account, event.row_key)
        self.report.fanned_out += 1

    def _payload(self, event: EventRow) -> dict[str, Any]:
        data = dict(event.data)
        if event.event == ev.AUTHENTICATION_ERROR:
            data.update(self._reauth(event.account))
        date = event.date.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"id": event.id, "serviceUrl": self.settings.public_url, "account": event.account, "date": date,
                "event": event.event, "data": data}

    def _reauth(self, account_id: str) -> dict[str, str]:
        from shared.core.links import reauth_link_for

        account = accounts.get_account(account_id)
        if account is None:
            return {}
        redirect = self.settings.reauth_redirect_url or account.meta.get("redirectUrl")
        if not redirect:
            return {}
        try:
            link = reauth_link_for(account, str(redirect), self.settings.link_max_ttl_seconds, self.settings)
        except ApiError as exc:
            log.warning("account %s: no re-authentication link for its authenticationError webhook (%s)",
                        account_id, exc.code)
            return {}
        return {"reauthUrl": link.url, "reauthExpires": link.expires}

    # -- delivery

    def deliver_due(self, limit: int = 1000) -> RunReport:
        started = time.monotonic()
        due = deliveries.due(self.clock(), limit)
        if not due:
            return self.report
        targets = {t.id: t for t in all_targets(self.settings)}
        by_target: dict[str, list[Delivery]] = defaultdict(list)
        for row in due:
            if row.target in targets:
                by_target[row.target].append(row)
            else:
                deliveries.delete(row)  # the target was deleted
                self.report.dropped += 1
        work = [(targets[t], sorted(rows, key=lambda r: r.eventId)) for t, rows in by_target.items()]
        if len(work) == 1:
            self._deliver_target(*work[0], started)
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(work)), thread_name_prefix="webhook") as pool:
                for future in [pool.submit(self._deliver_target, target, rows, started) for target, rows in work]:
                    future.result()
        return self.report

    def _deliver_target(self, target: Target, rows: list[Delivery], started: float) -> None:
        recovering = any(r.attempts for r in rows)  # it failed before: once it answers, send what waits
        while rows:
            for row in rows:
                if time.monotonic() - started > self.budget:
                    return  # the next run continues
                until = self.clock() + CLAIM
                claimed = deliveries.replace(row.model_copy(update={"nextAttemptAt": until, "claimedUntil": until}))
                if claimed is None:
                    continue  # another runner has it
                if not self._attempt(target, claimed):
                    return  # one probe per failing target per run; its other rows wait
            if not recovering:
                return
            # The target answers again: its rows waiting in backoff go now, not at their own next attempt.
            recovering, now = False, self.clock()
            rows = sorted((d for d in deliveries.of_target(target.id) if d.status == PENDING
                           and not (d.claimedUntil and d.claimedUntil > now)), key=lambda d: d.eventId)

    def _attempt(self, target: Target, row: Delivery) -> bool:
        now = self.clock()
        status, error = self._send(target, row, now)
        if status is not None and 200 <= status < 300:
            deliveries.delete(row)
            with _report_lock:
                self.report.delivered += 1
            return True
        attempts = row.attempts + 1
        update: dict[str, Any] = {"attempts": attempts, "lastAttemptAt": now, "lastStatus": status,
                                  "lastError": error, "claimedUntil": None}
        if now - row.created >= MAX_AGE:
            update.update(status=DEAD, deadAt=now)
            log.warning("webhook %s: event %s dead-lettered after %d attempts (%s)", target.id, row.eventId,
                        attempts, error)
        else:
            update["nextAttemptAt"] = now + timedelta(seconds=self.backoff(attempts))
            log.info("webhook %s: event %s attempt %d failed (%s); retrying", target.id, row.eventId, attempts, error)
        deliveries.replace(row.model_copy(update=update))
        with _report_lock:
            if update.get("status") == DEAD:
                self.report.dead += 1
            else:
                self.report.failed += 1
        return False

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure."""
        nominal = min(BASE_DELAY * 2 ** min(attempts - 1, 30), MAX_DELAY)
        return nominal * (1 - JITTER * self.rng())

    def _send(self, target: Target, row: Delivery, now: datetime) -> tuple[int | None, str | None]:
        """(HTTP status, error text); status None when the receiver was not reached."""
        import requests

        from shared.webhooks.transport import ForbiddenAddress

        try:
            secret = secret_of(target, self.settings)
        except SecretNotFound:
            return None, "no signing secret is configured for this webhook"
        except Exception as exc:  # noqa: BLE001 - the secret store is down: retry later like any failure
            return None, f"the signing secret could not be read ({type(exc).__name__})"
        body = row.body.encode("utf-8")
        timestamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: row.eventId, EVENT_HEADER: row.event, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body), "X-MC-Attempt": str(row.attempts + 1),
            # EmailEngine's, so its receivers work unchanged (shared.webhooks.signature)
            EE_EVENT_ID_HEADER: row.eventId, EE_SIGNATURE_HEADER: sign_ee(secret, body),
            EE_ATTEMPTS_HEADER: str(row.attempts),
        }
        assert self.session is not None
        try:
            response = self.session.post(target.url, data=body, headers=headers, timeout=TIMEOUT,
                                         allow_redirects=False, stream=True)
        except ForbiddenAddress as exc:  # checked at connection time: nothing was sent
            return None, f"refused: {exc}"
        except requests.RequestException as exc:
            return None, _reason(exc)
        response.close()  # the body is not read: only the status counts
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"


_report_lock = threading.Lock()
_session_lock = threading.Lock()
_sessions: dict[bool, requests.Session] = {}


def _signed_in(event: EventRow) -> bool:
    """A sign-in's ``authenticationSuccess`` that did not repair the account itself (then the callback reconnected
    the credential's accounts already)."""
    return event.event == ev.AUTHENTICATION_SUCCESS and event.data.get("reason") == "signIn" and \
        not event.data.get("repaired")


def _shared_session(*, loopback: bool) -> requests.Session:
    """One session per process (and address policy), so connections to receivers are reused from one run to
    the next. Its sockets go only to addresses checked when they were opened (``shared.webhooks.transport``:
    no private, loopback outside local development, link-local or metadata address, however resolved); no
    proxy or CA variables of the environment."""
    with _session_lock:
        if loopback not in _sessions:
            from shared.webhooks.transport import AddressPolicy, guarded_session

            _sessions[loopback] = guarded_session(AddressPolicy(loopback=loopback), pool_maxsize=MAX_WORKERS)
        return _sessions[loopback]


def _reason(exc: BaseException) -> str:
    return f"not reached ({type(exc).__name__})"
