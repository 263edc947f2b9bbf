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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.errors import ApiError
from shared.settings import Settings
from shared.storage.secrets.base import SecretStoreUnavailable
from shared.storage.tables import principals
from shared.storage.tables.records import utcnow

log = logging.getLogger("mailbox_connect.keepalive")
RUN_BUDGET = 90.0  # seconds of one run: well inside host.json functionTimeout (2 min)
RETRY_FAILED_AFTER = timedelta(days=1)  # a credential that failed for another reason waits this long


@dataclass
class KeepAliveReport:
    refreshed: list[str] = field(default_factory=list)  # credential ids
    revoked: list[str] = field(default_factory=list)  # needs a new sign-in (reported now, skipped from now on)
    failed: list[str] = field(default_factory=list)  # refused for another reason, or no account/app; retried
    skipped: int = 0  # stale, but already known to need a sign-in
    stopped: str | None = None  # why the run stopped early (throttling, outage, quota, time)

    def as_dict(self) -> dict:
        return {"refreshed": len(self.refreshed), "revoked": len(self.revoked), "failed": len(self.failed),
                "skipped": self.skipped, "stopped": self.stopped}


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
    log.info("keep-alive: %s", report.as_dict())
    return report
