"""Webhooks: lifecycle events (``shared.events``) delivered to the apps, signed, retried, never lost.

Why an outbox and timers (and no queue)
    An event is written in the same Table Storage transaction as the account change that caused it (the
    event row sits in the account's partition, ``shared.tables.outbox``), so a committed change always has
    its event and a failed one never does, and producing it cannot block or fail the request: no network
    call to a receiver happens on the request path. Delivery runs in timer functions
    (``shared.blueprints.lifecycle``):

    * ``webhook_delivery`` (every 10 s): fans the events listed in the ``outbox`` index out to the
      targets, then sends what is due.
    * ``webhook_sweeper`` (every 10 min): scans the accounts table for event rows older than
      ``SWEEP_GRACE`` (a fast-path index write lost in a crash, or a fan-out that died half-way) and fans
      them out. A full scan (about one storage request per thousand accounts), which is why it is not
      the normal path.

    A Storage queue would cut the latency to about a second, but needs another dependency, queue RBAC and
    host settings, a queue emulator locally, and still a sweeper for the message lost between the commit
    and the enqueue. Lifecycle events are rare (a few per account per month), so a 10-second tick is the
    simpler way to the same guarantees. Timer functions run on one instance at a time (the Functions host
    holds a blob lease); correctness does not depend on it (claims below).

Fan-out
    For each event and each target whose filter matches, one row in ``deliveries`` (partition = target):
    the exact JSON body (built once: ``id``, ``serviceUrl``, ``account``, ``date``, ``event``, ``data``, as
    EmailEngine names them, plus the event id), status, attempts, next attempt. Creating a row that exists
    is a no-op, so a repeated fan-out (sweeper and delivery racing, a crash before the event row was
    deleted) does not duplicate. Then the event row and its index row are deleted. ``authenticationError``
    events get ``data.reauthUrl``/``reauthExpires`` here: a re-authentication link of the account
    (``POST /v1/account/{account}/reauth``'s link, valid ``MC_LINK_MAX_TTL_SECONDS``) whose redirectUrl is
    ``MC_REAUTH_REDIRECT_URL``, else the redirectUrl of the account's last sign-in (``meta.redirectUrl``);
    left out when neither passes the redirect rules or the app is gone.

Delivery (per target, so a receiver failing forever never holds up another)
    Due rows are grouped by target and sent in event-id order, targets in parallel. Before each attempt
    the row is claimed (ETag-conditioned write pushing ``nextAttemptAt`` ``CLAIM`` into the future), so two
    runners never send the same row at once. 2xx: the row is deleted. Anything else (status, timeout,
    refused connection; redirects are not followed): ``attempts`` + 1 and the next attempt after an
    exponential backoff (``BASE_DELAY`` doubling up to ``MAX_DELAY``, minus up to 10 % jitter), and the
    target's other rows wait for the next run (one probe per failing target per run, not a burst). When a
    target that failed answers 2xx again, its rows waiting in backoff are sent in the same run. A
    failure more than ``MAX_AGE`` (24 h) after the fan-out moves the row to ``status = "dead"``: listed by
    ``GET /v1/webhooks/deadletters``, sent again by ``POST /v1/webhooks/deadletters/{id}/resend`` (a new
    24-hour window). About 32 attempts happen in the 24 hours; a receiver down for an hour gets everything
    at the first probe after it is back (at most an hour: the longest delay).

At least once, exactly once per id at a receiver that dedupes
    A receiver may see an event twice (it answered 2xx too late, or a crash between fan-out and clean-up)
    and must dedupe by ``id`` (also in ``X-MC-Event-Id``), keeping ids for longer than the retry window.
    Events of one account are produced in order and carry sortable ids and ``date``; retries can reorder
    them at the receiver, so order by ``date``/``id``, not by arrival.

Signature
    ``X-MC-Timestamp: <unix seconds>``, ``X-MC-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." +
    body)>``, ``X-MC-Event-Id``, ``X-MC-Event``. Receivers recompute it over the raw body (constant-time
    compare, :func:`verify_signature`) and reject timestamps more than 5 minutes off (replays).

Targets
    Registered through ``/v1/webhooks`` (scope ``admin``): their secret is generated, shown once, and kept
    in the secret store (``webhook-<id>``). Or configured: ``MC_WEBHOOK_URLS`` (comma-separated, every
    event), all signed with ``MC_WEBHOOK_SECRET`` locally or Key Vault secret ``mc-webhook-secret`` in
    Azure; their ids derive from the URL, so their delivery state survives restarts. Deleting a target
    drops its undelivered rows. Time comes from an injectable clock (``Dispatcher(clock=...)``), so the
    whole 24-hour schedule is tested without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import re
import secrets
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import urlsplit

from shared import events as ev
from shared.api_models import (
    DEAD_LETTER_ID_PATTERN,
    WEBHOOK_ID_PATTERN,
    DeadLetter,
    DeadLetterDeleted,
    DeadLetterList,
    DeadLetterResent,
    WebhookCreate,
    WebhookCreated,
    WebhookDeleted,
    WebhookInfo,
    WebhookList,
)
from shared.errors import ApiError
from shared.secrets import SecretNotFound, get_secret_store
from shared.settings import Settings
from shared.tables import deliveries, outbox, webhooks
from shared.tables.deliveries import DEAD, PENDING, Delivery
from shared.tables.outbox import EventRow
from shared.tables.records import utcnow
from shared.tables.webhooks import WebhookRow

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
SETTINGS_SECRET = "mc-webhook-secret"  # Key Vault secret of the MC_WEBHOOK_URLS targets (Azure)
SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-MC-Signature", "X-MC-Timestamp"
EVENT_ID_HEADER, EVENT_HEADER = "X-MC-Event-Id", "X-MC-Event"
USER_AGENT = "MailboxConnect-Webhooks/1"

Clock = Callable[[], datetime]


# --- signatures -------------------------------------------------------------------------------------------

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-MC-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(secret: str, timestamp: str, signature: str, body: bytes, *, tolerance: int = 300,
                     now: Optional[float] = None) -> bool:
    """What a receiver does: the timestamp is recent and one ``v1=`` signature matches (constant time)."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    expected = sign(secret, sent, body)
    return any(hmac.compare_digest(expected, s.strip()) for s in (signature or "").split(","))


# --- targets ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    id: str
    url: str
    events: tuple[str, ...]  # empty: every event
    source: str  # api | settings
    secret_name: Optional[str] = None  # api targets: the secret store name
    description: Optional[str] = None
    created: Optional[datetime] = None

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


def check_webhook_url(url: str) -> str:
    """https (plain http only for localhost), absolute, no credentials, no fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError:
        raise ValueError("must be an absolute https URL") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host or port == 0:
        raise ValueError("must be an absolute https URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    if parts.fragment or "#" in url:
        raise ValueError("must not contain a fragment")
    if any(c.isspace() for c in url):
        raise ValueError("must not contain whitespace")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError("must use https (plain http only for localhost)")
    if _is_special_address(host):
        raise ValueError("must not be a link-local, multicast or reserved address")
    return url


def _is_special_address(host: str) -> bool:
    """IP literals no webhook lives at: link-local (cloud metadata endpoints), multicast, unspecified."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_target_id(url: str) -> str:
    return "cfg" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def settings_targets(settings: Settings) -> list[Target]:
    found = []
    for url in settings.webhook_url_list:
        try:
            check_webhook_url(url)
        except ValueError as exc:
            log.error("MC_WEBHOOK_URLS: a URL is ignored: %s", exc)
            continue
        found.append(Target(settings_target_id(url), url, (), "settings"))
    return found


def _api_target(row: WebhookRow) -> Target:
    return Target(row.id, row.url, tuple(row.events), "api", row.secretName, row.description, row.created)


def all_targets(settings: Settings) -> list[Target]:
    return settings_targets(settings) + [_api_target(r) for r in sorted(webhooks.list_webhooks(), key=lambda r: r.id)]


_secret_lock = threading.Lock()
_secrets: dict[tuple[str, Optional[str], Optional[str]], str] = {}


def _secret(target: Target, settings: Settings) -> str:
    """The target's signing secret, read once per process; ``SecretNotFound`` when none is configured."""
    key = (target.id, target.secret_name, settings.webhook_secret)
    with _secret_lock:
        if key in _secrets:
            return _secrets[key]
    if target.source == "api":
        value = get_secret_store(settings).get(target.secret_name or "")
    elif settings.webhook_secret:
        value = settings.webhook_secret
    elif settings.key_vault_url:
        value = get_secret_store(settings).get(SETTINGS_SECRET)
    else:
        raise SecretNotFound("set MC_WEBHOOK_SECRET (or Key Vault secret mc-webhook-secret) for MC_WEBHOOK_URLS")
    with _secret_lock:
        _secrets[key] = value
    return value


def forget_secrets() -> None:
    with _secret_lock:
        _secrets.clear()


# --- the dispatcher ---------------------------------------------------------------------------------------

@dataclass
class RunReport:
    fanned_out: int = 0  # events handed to the targets
    delivered: int = 0
    failed: int = 0  # attempts that failed and will be retried
    dead: int = 0  # attempts that failed for good (dead letters)
    dropped: int = 0  # rows of targets that no longer exist


@dataclass
class Dispatcher:
    """One run of the delivery machinery. ``clock`` is the time of attempts, backoff and the retry window."""

    settings: Settings
    clock: Clock = utcnow
    rng: Callable[[], float] = random.random
    session: Optional["requests.Session"] = None
    budget: float = RUN_BUDGET
    report: RunReport = field(default_factory=RunReport)

    def __post_init__(self) -> None:
        if self.session is None:
            self.session = _shared_session()

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
        targets = all_targets(self.settings)
        for event_id, index in pending:
            event = outbox.get_event(index.eventPk, index.eventRk)
            if event is not None:
                self._fan_out(event, targets)
            outbox.remove_index(event_id)
        return len(pending)

    def sweep(self, limit: int = 1000) -> int:
        """``webhook_sweeper``: event rows the fast path missed (older than ``SWEEP_GRACE``)."""
        found = list(outbox.scan_events(self.clock() - SWEEP_GRACE, limit))
        if found:
            log.warning("sweeper: %d event(s) had no outbox index row (lost fast-path write); fanning out",
                        len(found))
            targets = all_targets(self.settings)
            for event in found:
                self._fan_out(event, targets)
                outbox.remove_index(event.id)
        return len(found)

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
        date = event.date.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"id": event.id, "serviceUrl": self.settings.public_url, "account": event.account, "date": date,
                "event": event.event, "data": data}

    def _reauth(self, account_id: str) -> dict[str, str]:
        from shared.accounts_service import reauth_link_for
        from shared.tables import accounts

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

    def _send(self, target: Target, row: Delivery, now: datetime) -> tuple[Optional[int], Optional[str]]:
        """(HTTP status, error text); status None when the receiver was not reached."""
        import requests

        try:
            secret = _secret(target, self.settings)
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
        }
        assert self.session is not None
        try:
            response = self.session.post(target.url, data=body, headers=headers, timeout=TIMEOUT,
                                         allow_redirects=False, stream=True)
        except requests.RequestException as exc:
            return None, _reason(exc)
        response.close()  # the body is not read: only the status counts
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"


_report_lock = threading.Lock()
_session_lock = threading.Lock()
_sessions: list["requests.Session"] = []


def _shared_session() -> "requests.Session":
    """One session per process, so connections to receivers are reused from one run to the next."""
    with _session_lock:
        if not _sessions:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            session.trust_env = False  # no proxy or CA variables of the environment
            adapter = HTTPAdapter(pool_maxsize=MAX_WORKERS)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            _sessions.append(session)
        return _sessions[0]


def _reason(exc: BaseException) -> str:
    return f"not reached ({type(exc).__name__})"


# --- the API (/v1/webhooks, scope admin) ------------------------------------------------------------------

def _info(target: Target) -> WebhookInfo:
    return WebhookInfo(id=target.id, url=target.url, events=list(target.events), description=target.description,
                       source=target.source, created=target.created)  # type: ignore[arg-type]


def create_webhook(body: WebhookCreate, settings: Settings) -> WebhookCreated:
    webhook_id = "wh" + secrets.token_hex(8)
    secret = "whsec_" + secrets.token_urlsafe(32)
    secret_name = f"webhook-{webhook_id}"
    get_secret_store(settings).set(secret_name, secret)  # first: a row never points at a missing secret
    row = WebhookRow(id=webhook_id, url=body.url, events=list(body.events), description=body.description,
                     secretName=secret_name, created=utcnow())
    webhooks.insert_webhook(row)
    log.info("webhook %s registered", webhook_id)
    return WebhookCreated(**_info(_api_target(row)).model_dump(), secret=secret)


def list_webhooks(settings: Settings) -> WebhookList:
    return WebhookList(webhooks=[_info(t) for t in all_targets(settings)])


def delete_webhook(webhook_id: Optional[str], settings: Settings) -> WebhookDeleted:
    webhook_id = webhook_id or ""
    if any(t.id == webhook_id for t in settings_targets(settings)):
        raise ApiError(409, "configured_in_settings", "this webhook comes from MC_WEBHOOK_URLS; change the "
                                                      "setting to remove it")
    row = webhooks.get_webhook(webhook_id) if _valid_id(webhook_id) else None
    if row is None:
        raise ApiError(404, "not_found", f"no webhook with id {webhook_id!r}")
    webhooks.delete_webhook(row.id)  # the commit point: from now on nothing is sent to it
    for delivery in deliveries.of_target(row.id):
        deliveries.delete(delivery)
    try:
        get_secret_store(settings).delete(row.secretName)
    except Exception:  # noqa: BLE001 - the webhook is gone; an orphaned secret is harmless
        log.warning("webhook %s deleted; its secret could not be deleted", row.id, exc_info=True)
    forget_secrets()
    log.info("webhook %s deleted", row.id)
    return WebhookDeleted(id=row.id)


def _valid_id(webhook_id: str) -> bool:
    return re.match(WEBHOOK_ID_PATTERN, webhook_id) is not None


def _dead_letter(row: Delivery) -> DeadLetter:
    return DeadLetter(id=f"{row.target}.{row.eventId}", webhook=row.target, eventId=row.eventId,
                      event=row.event, account=row.account, attempts=row.attempts, created=row.created,  # type: ignore[arg-type]
                      lastAttemptAt=row.lastAttemptAt, lastStatus=row.lastStatus, lastError=row.lastError,
                      deadAt=row.deadAt)


def list_dead_letters() -> DeadLetterList:
    rows = sorted(deliveries.dead(), key=lambda r: (r.eventId, r.target))
    return DeadLetterList(deadLetters=[_dead_letter(r) for r in rows])


def _get_dead(dead_letter_id: Optional[str]) -> Delivery:
    if not dead_letter_id or not re.match(DEAD_LETTER_ID_PATTERN, dead_letter_id):
        raise ApiError(400, "invalid_input", "id: not a dead letter id (<webhook id>.<event id>)", field="id")
    target, _, event_id = dead_letter_id.partition(".")
    row = deliveries.get(target, event_id)
    if row is None or row.status != DEAD:
        raise ApiError(404, "not_found", f"no dead letter with id {dead_letter_id!r}")
    return row


def resend_dead_letter(dead_letter_id: Optional[str], settings: Settings, clock: Clock = utcnow) -> DeadLetterResent:
    row = _get_dead(dead_letter_id)
    if not any(t.id == row.target for t in all_targets(settings)):
        raise ApiError(409, "webhook_gone", "the webhook of this dead letter no longer exists")
    now = clock()
    resent = deliveries.replace(row.model_copy(update={
        "status": PENDING, "attempts": 0, "created": now, "nextAttemptAt": now, "deadAt": None, "claimedUntil": None,
    }))
    if resent is None:
        raise ApiError(409, "conflict", "the dead letter changed meanwhile; list again")
    log.info("webhook %s: dead letter %s queued again", row.target, row.eventId)
    return DeadLetterResent(id=f"{row.target}.{row.eventId}", nextAttemptAt=now)


def discard_dead_letter(dead_letter_id: Optional[str]) -> DeadLetterDeleted:
    row = _get_dead(dead_letter_id)
    deliveries.delete(row)
    return DeadLetterDeleted(id=f"{row.target}.{row.eventId}")
