"""Credential keep-alive: a refresh token nobody used for 90 days dies; refresh unused ones well before.

Microsoft's refresh tokens expire after 90 days without use. An account the app does not ask tokens for
(a mailbox it syncs rarely, a paused customer) would lose its credential silently. The timer function
``credential_keepalive`` (hourly, ``shared.web.blueprints.lifecycle``) refreshes every credential whose
refresh token was last written more than ``MC_KEEPALIVE_DAYS`` (default 30) days ago and stores the new
one, through the token hand-off's own code (``shared.handoff.tokens.keep_alive``: per-credential lock, MSAL
refresh, rotation, account marking), so nothing is duplicated and the two never disagree.

Budget
    Key Vault allows about 300 secret writes per 10 s per vault, shared with sign-ins and rotations. A run
    refreshes at most ``MC_KEEPALIVE_MAX_PER_RUN`` (default 50) credentials, one at a time, and stops at
    the first sign of pressure: the secret store throttled or unavailable (``SecretStoreUnavailable``,
    after the store's own 429/``Retry-After`` handling) or Microsoft unavailable. What is left is taken by
    the next run. 50 per hour is 1,200 a day, 36,000 per 30 days; credentials in use are rotated by the
    hand-off anyway (daily), so only idle ones reach the keep-alive.

Revoked credentials
    ``invalid_grant`` (and the other re-authentication errors) marks every account of the credential
    ``authenticationError``; the ``authenticationError`` webhook is produced on that state transition only
    (``shared.handoff.tokens.mark_reauthentication_required``), so once. The credential row then carries
    ``brokenCode``, and later runs skip it without calling Microsoft, until a sign-in rewrites the row.
    Other failures (``TokenRefused``: the app's configuration; no account or app left) are counted, not
    marked on the accounts, and retried after ``RETRY_FAILED_AFTER`` (a day) so they cannot use up every
    run's quota.

Which credentials: a filtered scan of the principals table (``RowKey eq 'credential' and tokenWrittenAt lt
cutoff``), served page by page, stopped as soon as the run's quota is used.

Mailbox access, re-checked (:func:`recheck_access`, after the refreshes, in the same run)
    Access can be lost after sign-in (Full Access removed, the mailbox deleted, IMAP disabled) while the
    credential keeps working, so every ``connected`` account's mailbox access check is run again on a
    schedule: ``ACCESS_RECHECK_AFTER`` (a day) after it was last decided, and at every run (``ACCESS_RETRY_AFTER``)
    while it is ``pending`` (could not run at sign-in) or ``denied``. The access token comes from the token
    hand-off (``shared.handoff.tokens.hand_off``: the resource the app uses, cached, one refresh per credential),
    the check and its record from ``shared.core.mailbox_access.prove_access``: ``ok`` or ``denied`` on the
    account's ``accessCheck`` (and ``accessCheckedAt``); a check that cannot run records nothing. At most
    ``MAX_ACCESS_CHECKS_PER_RUN`` checks per run, over the accounts in id order, resuming after the last one
    seen (per process); skipped entirely with ``MC_ACCESS_CHECK=off``. (``MC_KEEPALIVE_MAX_PER_RUN=0`` turns
    off the refreshes only.)

    Webhooks, once per transition, written with the row change (so a repeated run sends nothing new):
    ``mailboxAccessLost`` when the account goes to ``denied`` (from ``ok``, ``pending`` or ``off``), and, when
    access comes back (``denied`` -> ``ok``), ``authenticationSuccess`` with ``reason: mailboxAccessRestored``
    and ``repaired: true``, so an app that paused the mailbox knows it can resume. The account's ``state``
    stays ``connected`` (the credential works; the hand-off still answers), and an account in
    ``authenticationError`` is not re-checked (it has no working token; its sign-in checks access anyway).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared.errors import ApiError
from shared.settings import Settings
from shared.storage.errors import StorageUnavailable
from shared.storage.secrets.base import SecretStoreUnavailable
from shared.storage.tables import accounts, principals
from shared.storage.tables.accounts import CONNECTED, Account
from shared.storage.tables.records import utcnow

if TYPE_CHECKING:  # pragma: no cover
    from shared.storage.tables.outbox import EventRow

log = logging.getLogger("mailbox_connect.keepalive")
RUN_BUDGET = 90.0  # seconds of one run: well inside host.json functionTimeout (2 min)
RETRY_FAILED_AFTER = timedelta(days=1)  # a credential that failed for another reason waits this long
ACCESS_RECHECK_AFTER = timedelta(days=1)  # a proven (or never checked) mailbox is opened again after this
ACCESS_RETRY_AFTER = timedelta(minutes=50)  # a pending or denied one: at every hourly run
MAX_ACCESS_CHECKS_PER_RUN = 100  # mailbox access checks (an IMAP login or a Graph call each) per run
ACCESS_PAGE = 200  # account rows read per storage call while looking for due ones


@dataclass
class AccessReport:
    checked: int = 0  # access checks that ran (ok or refused)
    lost: list[str] = field(default_factory=list)  # accounts that went to denied (mailboxAccessLost sent)
    restored: list[str] = field(default_factory=list)  # denied -> ok
    unproven: int = 0  # the check could not run (nothing recorded)
    failed: list[str] = field(default_factory=list)  # no access token (re-authentication needed, refused, gone)
    stopped: str | None = None

    def as_dict(self) -> dict:
        return {"checked": self.checked, "lost": len(self.lost), "restored": len(self.restored),
                "unproven": self.unproven, "failed": len(self.failed), "stopped": self.stopped}


@dataclass
class KeepAliveReport:
    refreshed: list[str] = field(default_factory=list)  # credential ids
    revoked: list[str] = field(default_factory=list)  # needs a new sign-in (reported now, skipped from now on)
    failed: list[str] = field(default_factory=list)  # refused for another reason, or no account/app; retried
    skipped: int = 0  # stale, but already known to need a sign-in
    stopped: str | None = None  # why the run stopped early (throttling, outage, quota, time)
    access: AccessReport = field(default_factory=AccessReport)  # the mailbox access re-checks of the run

    def as_dict(self) -> dict:
        return {"refreshed": len(self.refreshed), "revoked": len(self.revoked), "failed": len(self.failed),
                "skipped": self.skipped, "stopped": self.stopped, "access": self.access.as_dict()}


def run_keepalive(settings: Settings, *, clock: Callable[[], datetime] = utcnow,
                  max_per_run: int | None = None, budget: float = RUN_BUDGET) -> KeepAliveReport:
    from shared.handoff.tokens import ReauthenticationRequired, TokenRefused, keep_alive

    report = KeepAliveReport()
    quota = settings.keepalive_max_per_run if max_per_run is None else max_per_run
    cutoff = clock() - timedelta(days=settings.keepalive_days)
    started = time.monotonic()
    tried = 0
    now = clock()
    for credential in principals.stale_credentials(cutoff):
        if credential.broken or (credential.keepAliveAt and now - credential.keepAliveAt < RETRY_FAILED_AFTER):
            report.skipped += 1
            continue
        if tried >= quota:
            report.stopped = "quota"
            break
        if time.monotonic() - started > budget:
            report.stopped = "time"
            break
        tried += 1
        cred_id = credential.credentialId
        try:
            outcome = keep_alive(credential, settings)
        except ReauthenticationRequired as exc:
            report.revoked.append(cred_id)  # the row now carries brokenCode: skipped until a sign-in
            log.warning("keep-alive: credential %s needs a new sign-in (%s)", cred_id, exc.error_code)
            continue
        except TokenRefused as exc:
            report.failed.append(cred_id)
            principals.mark_keep_alive_failed(credential, now)
            log.warning("keep-alive: Microsoft refused credential %s (%s)", cred_id, exc.error_code)
            continue
        except SecretStoreUnavailable:
            report.stopped = "secret store unavailable"
            break
        except ApiError as exc:
            if exc.status == 503:
                report.stopped = "Microsoft unavailable"
                break
            report.failed.append(cred_id)
            principals.mark_keep_alive_failed(credential, now)
            log.warning("keep-alive: credential %s failed (%s)", cred_id, exc.code)
            continue
        if outcome == "refreshed":
            report.refreshed.append(cred_id)
        else:
            report.failed.append(cred_id)
            principals.mark_keep_alive_failed(credential, now)
            log.info("keep-alive: credential %s skipped (%s)", cred_id, outcome)
    if report.stopped in (None, "quota"):
        report.access = recheck_access(settings, clock=clock, budget=budget - (time.monotonic() - started))
    else:
        report.access.stopped = f"not run ({report.stopped})"
    log.info("keep-alive: %s", report.as_dict())
    return report


# --- mailbox access, re-checked --------------------------------------------------------------------------------

_access_bookmarks: dict[str, str] = {}  # per accounts table: the last account id the re-check looked at


class _Stop(Exception):
    pass


def access_due(account: Account, now: datetime) -> bool:
    """Whether the keep-alive should open the account's mailbox again now (see the module docstring)."""
    if account.state != CONNECTED:
        return False
    checked = account.accessCheckedAt
    if checked is None:
        return True
    if checked.tzinfo is None:
        checked = checked.replace(tzinfo=UTC)
    wait = ACCESS_RETRY_AFTER if account.access_status in ("pending", "denied") else ACCESS_RECHECK_AFTER
    return now - checked >= wait


def recheck_access(settings: Settings, *, clock: Callable[[], datetime] = utcnow,
                   max_per_run: int = MAX_ACCESS_CHECKS_PER_RUN, budget: float = RUN_BUDGET) -> AccessReport:
    """Run the mailbox access check again for the accounts that are due; see the module docstring."""
    report = AccessReport()
    if settings.access_check == "off":
        report.stopped = "off (MC_ACCESS_CHECK)"
        return report
    now = clock()
    started = time.monotonic()
    key = settings.table_name(accounts.TABLE)
    after = {"start": _access_bookmarks.get(key, "")}
    continuation = None
    try:
        while True:
            rows, continuation = accounts.query_page("PartitionKey gt @start", after, ACCESS_PAGE, continuation)
            for account in rows:
                if access_due(account, now):
                    if report.checked + report.unproven + len(report.failed) >= max_per_run:
                        report.stopped = "quota"
                        return report
                    if time.monotonic() - started > budget:
                        report.stopped = "time"
                        return report
                    _recheck(account, settings, report)
                _access_bookmarks[key] = account.account
            if continuation is None:
                break
        _access_bookmarks.pop(key, None)  # the end of the table: the next run starts from the beginning
    except _Stop as stop:
        report.stopped = str(stop)
    except StorageUnavailable:
        report.stopped = "storage unavailable"
    return report


def _recheck(account: Account, settings: Settings, report: AccessReport) -> None:
    from shared.core.access import UNRESTRICTED
    from shared.core.mailbox_access import prove_access
    from shared.handoff.tokens import ReauthenticationRequired, hand_off
    from shared.microsoft.access_check import DENIED, NOT_FOUND, OK

    try:
        token = hand_off(account.account, settings, caller=UNRESTRICTED).accessToken
    except SecretStoreUnavailable:
        raise _Stop("secret store unavailable") from None
    except ReauthenticationRequired:
        report.failed.append(account.account)  # now authenticationError (its own webhook); skipped from now on
        return
    except ApiError as exc:
        if exc.status == 503:
            raise _Stop("Microsoft unavailable") from None
        report.failed.append(account.account)  # deleted meanwhile, app gone, the token refused: not an access loss
        log.info("keep-alive: no access token to re-check account %s (%s)", account.account, exc.code)
        return
    before = account.access_status
    result = prove_access(account, token, settings, events_for=_access_events)
    if result.outcome in (DENIED, NOT_FOUND):
        report.checked += 1
        if before != "denied":
            report.lost.append(account.account)
            log.warning("keep-alive: account %s lost access to its mailbox (%s)", account.account, result.detail)
    elif result.outcome == OK:
        report.checked += 1
        if before == "denied":
            report.restored.append(account.account)
    else:
        report.unproven += 1


def _access_events(before: Account, after: Account) -> list[EventRow]:
    """The webhook of a transition, written with the row change by ``prove_access`` (so once per transition)."""
    from shared.core import events

    was = before.access_status
    if after.accessCheck == "denied" and was != "denied":
        return [events.mailbox_access_lost(after, was)]
    if after.accessCheck == "ok" and was == "denied":
        return [events.authentication_success(after, reason="mailboxAccessRestored", repaired=True)]
    return []
