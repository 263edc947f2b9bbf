"""``GET /v1/links/{link}`` (scope ``api``): which account a sign-in link produced, so an app can verify the
redirect back to it (``redirectUrl?account=..&state=..&link=..``) instead of trusting its parameters.

Why: the redirect's parameters are plain text in a URL, and derived account ids are predictable, so anyone
can type ``redirectUrl?account=<someone else's account>`` into a browser. The app keeps the ``link`` id of
the form's answer with the user it made the link for; on return it asks this route for that id and accepts
the account only when the answer names the same account (and, if it wants, the same ``state``).

The link id is the link's nonce (``shared.core.links``): it is in the link's data anyway, and opens nothing
without the signature. The answer comes from the used-link row (``shared.storage.tables.links``): one point
read. The sign-in marks the row completed after its commit (``completedAt``, ``state``, ``app``) and keeps it
at least a day (``VERIFY_WINDOW``). If that mark was lost (storage failed right after the commit), the
account row decides, best effort: the claim counts as completed when the account points at the credential
the claim recorded (if it recorded one) and was written no earlier than ``SLACK`` before the claim (the
sign-in takes its timestamps around the claim), and ``state`` is ``new`` when the account was created
within that time. A link that is unknown, expired and purged, failed, or still in progress answers 404, as
does a link whose account the API token may not see (``shared.core.access``); all with the same message.
"""

from __future__ import annotations

import re
from datetime import timedelta

from shared.core.access import Caller
from shared.errors import InvalidInput, NotFound
from shared.schemas import LINK_ID_PATTERN, LinkStatus
from shared.storage.tables import accounts, links

SLACK = timedelta(minutes=5)


def check_link_id(value: str | None) -> str:
    if not value or not re.fullmatch(LINK_ID_PATTERN, value):
        raise InvalidInput("link: not a link id (the `link` of the form's answer)", field="link")
    return value


def link_status(link_id: str | None, caller: Caller) -> LinkStatus:
    nonce = check_link_id(link_id)
    missing = NotFound(f"no completed sign-in for link {nonce!r}")
    row = links.get_used(nonce)
    if row is None:
        raise missing
    if row.completedAt is not None and row.state in ("new", "existing"):
        new, app = row.state == "new", row.app
    else:  # the mark after the commit was lost, or the sign-in has not committed (yet, or ever)
        account = accounts.get_account(row.account)
        if account is None or account.updated < row.usedAt - SLACK or \
                (row.credential and account.credentialId != row.credential):
            raise missing
        new, app = account.created >= row.usedAt - SLACK, account.appId
    if not (caller.may_name(row.account) and caller.may_use_app(app)):
        raise missing
    return LinkStatus(link=nonce, account=row.account, state="new" if new else "existing",
                      completedAt=row.completedAt, app=app)
