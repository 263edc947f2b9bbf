"""The sweeper: what sign-ins leave behind when they expire, die or cannot clean up after themselves.

Table Storage has no TTL, and a sign-in whose storage goes down for the whole callback cannot run its own
compensation (release the link, take back the binding it wrote: ``shared.signin.flow._undo_before_commit``).
The timer function ``storage_sweeper`` (every 10 minutes, ``shared.web.blueprints.lifecycle``) calls
:func:`run_sweeper`, which, in this order:

(Pending sign-ins are no longer stored: their flow lives in the browser, ``shared.signin.flowstate``, so
there are no flow rows to expire.)

1. **Dead claims**: a used-link row claimed more than the flow TTL ago, with no ``completedAt`` (the sign-in
   never recorded its commit), whose account does not exist, belongs to a sign-in that died between claiming
   the link and committing the account (a callback lives far less than the flow TTL: the function timeout is
   2 minutes, ``MC_FLOW_TTL_SECONDS`` 15). The claim is taken over (deleted under its ETag), so the same link
   works again; first, the credential the claim names (``links.UsedLink.credential``) is collected as below,
   including a refresh token written before its credential row was (only a claim names such a secret).
2. **Expired used links**: used-link rows whose ``expiresAt`` (the link's expiry, or later for the app's
   verification window, ``links.complete``) passed: the signature check refuses an expired link anyway.
3. **Unreferenced credentials**: a bounded scan (``MAX_CREDENTIALS_PER_RUN`` per run, resuming after the
   last credential id it checked, per process) of credential rows whose refresh token was written more than
   the flow TTL ago. A credential no account points at is deleted: its leftover index rows, the row (under
   the ETag it was read with) and its secret. Index rows whose account is gone or points at another
   credential are deleted too (they would keep the credential alive for ever).
4. **Account counts**: compares up to ``MAX_COUNTED_PER_RUN`` accounts (resuming after the last one, per process)
   with the rows that count them (``shared.storage.tables.accounts.reconcile_counts``) and syncs those that
   disagree: a sync lost to a crash or an outage, or accounts written before counts existed.

Races with a sign-in in progress (../shared/DESIGN.md invariant 4: the account row is the truth)
    Only credentials written longer ago than the flow TTL are touched: a sign-in rewrites the credential row
    (``tokenWrittenAt``) before it writes the index row and the account. After removing index rows the
    credential row is read again; if a sign-in rewrote it meanwhile, the removed rows are written back and
    nothing else happens. The row is deleted under its ETag, then the secret, as ``shared.signin.flow.unbind``
    does; the same few-millisecond window remains (a sign-in of the same signer rewriting row and secret
    between those two deletes), with the same outcome: the account answers ``403 OauthRenewError``
    (``authenticationFailed: true``) and one more sign-in repairs it.

Limits
    A claim that produced its account but could not record its completion (``links.complete`` is best
    effort after the commit), whose account is then deleted through the API while the link is still valid,
    looks dead and is taken over: that link could connect the mailbox once more. A refresh token written by a
    sign-in that then failed *and* released its claim (storage failing only for the credential row) is not
    named anywhere; it stays until the same signer signs in again and overwrites it.

A run stops at its time budget, or at the first storage or secret-store outage (the next run goes on), and
every step is idempotent. ``clock`` is injectable: tests run the sweeper "later" instead of waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.core.secret_placement import reseal_credential
from shared.settings import Settings
from shared.storage import sealed
from shared.storage.errors import StorageUnavailable
from shared.storage.secrets.base import SecretStoreUnavailable
from shared.storage.tables import accounts, apps, links, principals
from shared.storage.tables.principals import Credential, IndexRow
from shared.storage.tables.records import utcnow

log = logging.getLogger("mailbox_connect.sweeper")
RUN_BUDGET = 90.0  # seconds of one run: well inside host.json functionTimeout (2 min)
MAX_CREDENTIALS_PER_RUN = 500  # credentials checked per run by the scan (step 3)
MAX_COUNTED_PER_RUN = 5000  # accounts compared with their count rows per run (step 4)

_bookmarks: dict[str, str] = {}  # per table: where the credential scan or the count check resumes (per process)


class _OutOfTime(Exception):
    pass


@dataclass
class SweepReport:
    claims: int = 0  # dead link claims taken over (the link works again)
    links: int = 0  # used-link rows of expired links deleted
    credentials: int = 0  # unreferenced credentials deleted (row and secret)
    index_rows: int = 0  # leftover index rows deleted
    checked: int = 0  # credentials the scan looked at
    counted: int = 0  # accounts compared with their count rows
    recounted: int = 0  # accounts whose count was wrong and was synced
    resealed: int = 0  # refresh tokens sealed again under the current data key (after rotate-data-key)
    stopped: str | None = None  # why the run stopped early

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_sweeper(settings: Settings, *, clock: Callable[[], datetime] = utcnow, budget: float = RUN_BUDGET,
                max_credentials: int = MAX_CREDENTIALS_PER_RUN) -> SweepReport:
    """One sweep (see the module docstring); never raises for an outage (``stopped`` says why it ended)."""
    now = clock()
    cutoff = now - timedelta(seconds=settings.flow_ttl_seconds)
    deadline = time.monotonic() + budget
    report = SweepReport()

    def in_time() -> None:
        if time.monotonic() > deadline:
            raise _OutOfTime

    try:
        for nonce, claim in links.stale_claims(cutoff):
            in_time()
            if claim.completedAt is not None or accounts.get_account(claim.account) is not None:
                continue  # it produced its account: the link stays used (invariant 3)
            if claim.credential:
                collect_credential(claim.credential, cutoff, settings, report, secret_without_row=True)
            if links.delete_row(nonce, claim.etag):
                report.claims += 1
                log.info("sweeper: took over the dead claim of link %s..", nonce[:6])
        for nonce, etag in links.expired(now):
            in_time()
            report.links += links.delete_row(nonce, etag)
        _scan_credentials(cutoff, settings, report, max_credentials, in_time)
        in_time()
        _reconcile_counts(settings, report)
    except _OutOfTime:
        report.stopped = "time"
    except (StorageUnavailable, SecretStoreUnavailable) as exc:
        report.stopped = f"unavailable ({type(exc).__name__})"
    log.info("sweeper: %s", report.as_dict())
    return report


def _reconcile_counts(settings: Settings, report: SweepReport) -> None:
    key = settings.table_name(accounts.TABLE)
    start = _bookmarks.get(key, "")
    checked, synced, end = accounts.reconcile_counts(start, MAX_COUNTED_PER_RUN, [a.id for a in apps.list_apps()])
    report.counted, report.recounted = checked, synced
    if end is None:
        _bookmarks.pop(key, None)  # the end of the table: the next run starts from the beginning
    else:
        _bookmarks[key] = end


def _scan_credentials(cutoff: datetime, settings: Settings, report: SweepReport, max_credentials: int,
                      in_time: Callable[[], None]) -> None:
    key = settings.table_name(principals.TABLE)
    for credential in principals.credentials_after(_bookmarks.get(key, ""), cutoff):
        if report.checked >= max_credentials:
            report.stopped = "quota"
            return
        in_time()
        if not collect_credential(credential.credentialId, cutoff, settings, report, credential=credential) and \
                credential.sealedRefreshToken:
            report.resealed += _reseal(credential, settings)
        report.checked += 1
        _bookmarks[key] = credential.credentialId
    _bookmarks.pop(key, None)  # the end of the table: the next run starts from the beginning


def collect_credential(credential_id: str, cutoff: datetime, settings: Settings, report: SweepReport, *,
                       credential: Credential | None = None, secret_without_row: bool = False) -> bool:
    """Delete the credential when no account points at it (leftover index rows, row, secret); True if deleted.

    ``secret_without_row``: the credential comes from a dead claim, whose sign-in may have written the secret
    but not the row; with no row, the secret is deleted by its derived name.
    """
    if credential is None:
        credential = principals.get_credential(credential_id)
    if credential is not None and _aware(credential.tokenWrittenAt) >= cutoff:
        return False  # written lately: a sign-in of this signer may be under way
    referenced = False
    removed: list[IndexRow] = []
    for row in principals.index_rows(credential_id):
        account = accounts.get_account(row.accountId)
        if account is not None and account.credentialId == credential_id:
            referenced = True
            continue
        principals.remove_account(credential_id, row.accountId)
        removed.append(row)
    after = principals.get_credential(credential_id)
    if (after.etag if after else None) != (credential.etag if credential else None):
        # A sign-in rewrote the credential meanwhile: the index rows may be its own. Put them back (a leftover
        # index row is harmless to readers) and leave everything else to the next run.
        for row in removed:
            principals.add_account(credential_id, row.accountId, row.mailbox)
        return False
    report.index_rows += len(removed)
    if referenced:
        return False
    if credential is not None:
        if not principals.delete_credential_row(credential):
            return False  # rewritten since it was read: a sign-in; its index row comes next
        sealed.drop_secret(settings, credential.secretName)
    elif secret_without_row:
        sealed.drop_secret(settings, principals.secret_name(credential_id))
    else:
        return False
    report.credentials += 1
    log.info("sweeper: deleted credential %s, which no account uses", credential_id)
    return True


def _reseal(credential: Credential, settings: Settings) -> bool:
    """Step 3's other job, on a credential still in use: a refresh token sealed under an older data key is sealed
    again under the current one (``shared.core.secret_placement``); one that does not open is left (its accounts
    learn it at their next token request)."""
    try:
        return reseal_credential(credential, settings)
    except sealed.Unsealable:
        log.warning("sweeper: the sealed refresh token of credential %s does not open", credential.credentialId)
        return False


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
