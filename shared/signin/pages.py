"""Hosted HTML pages: what a person sees when the sign-in cannot go on to the app.

Every page is small and self-contained (inline CSS, no scripts, no external assets, so the CSP can forbid
everything else), in plain words: what happened, the mailbox concerned, what to do next, and a "Try again"
link when a retry can help. Never a stack trace, an internal id, a trace id or a token. ``browser_mismatch``
(a callback without its browser's cookie: maybe someone who learnt a ``state`` value) names neither the
mailbox nor the link and has no "Try again": the person reopens the link from where they got it.

``page(kind, mailbox=, retry_url=, detail=)`` gives the HTML and status (HTML only: the web layer sends it
with ``security_headers()``: ``SECURITY_HEADERS``, and HSTS over https).
``detail`` is an extra line for the person (for example Microsoft's error description); it is cut to its
first line, stripped of Microsoft's trace/correlation ids and timestamps, and shortened. An unknown
``kind`` renders the generic ``error`` page rather than failing.

Kinds: ``link_invalid``, ``link_expired``, ``link_used``, ``session_unknown``, ``session_expired``,
``browser_mismatch``, ``unavailable``, ``signin_cancelled``, ``mailbox_access_denied``,
``mailbox_not_found``, ``email_mismatch``, ``app_unavailable``, ``microsoft_error``, ``error``.

``chooser(choices, mailbox=, stale=)`` is the one page that is not an error (200): a link that names no OAuth
app while several are enabled (EmailEngine's ``type`` false or absent) lets the person pick one, as
EmailEngine's hosted form does. Each choice is a plain link (no form, no script) to the same signed link with
``&app=<id>``; ``shared.signin.flow`` decides what the choices are and accepts only those.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from html import escape
from typing import NamedTuple

log = logging.getLogger("mailbox_connect.pages")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
# HSTS: one year, this host only (no includeSubDomains: the service may live under an app's own domain, whose
# other hosts are not ours to pin; no preload). Only over https; see ``security_headers``.
HSTS = "max-age=31536000"


def security_headers(https: bool) -> dict[str, str]:
    """``SECURITY_HEADERS``, plus ``Strict-Transport-Security`` when the pages are served over https (the web
    layer decides that from ``MC_PUBLIC_URL``: links and the ``/oauth`` redirect URI are built from it)."""
    return {**SECURITY_HEADERS, "Strict-Transport-Security": HSTS} if https else dict(SECURITY_HEADERS)

_START_AGAIN = "Go back to the app that sent you here and ask it for a new sign-in link."


@dataclass(frozen=True)
class PageText:
    title: str
    what: str  # what happened
    next: str  # what the person can do
    status: int = 400


PAGES: dict[str, PageText] = {
    "link_invalid": PageText(
        "This sign-in link is not valid",
        "The link is incomplete, or it was changed after the app created it, so it cannot be used.",
        f"{_START_AGAIN} If you copied the link, check that you copied all of it."),
    "link_expired": PageText(
        "This sign-in link has expired",
        "Sign-in links work only for a limited time, and this one is too old.",
        _START_AGAIN, 410),
    "link_used": PageText(
        "This sign-in link was already used",
        "This link has already connected the mailbox. Each link works only once.",
        "If the mailbox works in the app, there is nothing more to do. To connect it again, ask the app for "
        "a new sign-in link.", 409),
    "session_unknown": PageText(
        "This sign-in session is not known",
        "The sign-in was already finished, or this page was opened from an old browser tab, the browser "
        "history or a bookmark.",
        "Start again from the sign-in link the app gave you."),
    "session_expired": PageText(
        "This sign-in took too long",
        "For your security, a sign-in must be finished within a few minutes of opening the link.",
        "Start the sign-in again. The link still works if it has not expired.", 410),
    "browser_mismatch": PageText(
        "Finish signing in in the same browser",
        "This sign-in was started in another browser or window, or your browser blocked the cookie that "
        "ties the sign-in to it. For your security, this page cannot continue it.",
        "Open the sign-in link again from the app or the message that gave it to you, in the browser you "
        "want to use, and sign in there. If it happens again, allow cookies for this site."),
    "unavailable": PageText(
        "The service is busy",
        "We could not reach a service we depend on. Nothing was changed.",
        "Please try again in a minute.", 503),
    "signin_cancelled": PageText(
        "Sign-in was cancelled",
        "The sign-in was cancelled, or the permissions the app asked for were not accepted, so the mailbox "
        "was not connected.",
        "To connect the mailbox, try again and accept the permissions. If Microsoft says an administrator "
        "must approve the app, ask your IT administrator."),
    "mailbox_access_denied": PageText(
        "Your account cannot open this mailbox",
        "You signed in, but the account you used does not have access to this mailbox, so it was not "
        "connected. For a shared mailbox, an administrator must give your account Full Access to it.",
        "Try again and sign in with an account that can open the mailbox, or ask your IT administrator for "
        "access first.", 403),
    "mailbox_not_found": PageText(
        "This mailbox was not found",
        "Microsoft 365 has no mailbox with this address that can be used here, or it is not enabled for "
        "this kind of access. The mailbox was not connected.",
        "Check the address with the app that sent you here and ask it for a new sign-in link. If the "
        "address is right, ask your IT administrator whether the mailbox exists in Microsoft 365.", 404),
    "email_mismatch": PageText(
        "You signed in with a different account",
        "The app asked to connect a specific mailbox, but you signed in with an account for another one. "
        "Nothing was connected.",
        "Try again and sign in with the account of the mailbox shown here."),
    "app_unavailable": PageText(
        "This sign-in is no longer available",
        "The Microsoft sign-in setup this link uses has been removed or turned off.",
        "Contact the app that sent you here; it needs to send you a new link.", 410),
    "microsoft_error": PageText(
        "Microsoft could not sign you in",
        "Microsoft reported a problem during the sign-in, so the mailbox was not connected.",
        "Try again. If it keeps happening, contact your IT administrator and tell them what this page says.",
        502),
    "error": PageText(
        "Something went wrong",
        "The sign-in could not be completed, and the mailbox was not connected.",
        _START_AGAIN),
}

# Microsoft appends "Trace ID: ... Correlation ID: ... Timestamp: ..." to its descriptions.
_MS_NOISE = re.compile(r"\s*(Trace ID|Correlation ID|Timestamp)\s*:.*$", re.IGNORECASE)
_DETAIL_MAX = 300


def clean_detail(detail: str | None) -> str | None:
    """First line only, without Microsoft's trace ids and timestamps, at most ``_DETAIL_MAX`` characters."""
    if not detail:
        return None
    line = detail.strip().splitlines()[0] if detail.strip() else ""
    line = _MS_NOISE.sub("", line).strip()
    if len(line) > _DETAIL_MAX:
        line = line[:_DETAIL_MAX - 1].rstrip() + "\u2026"
    return line or None


def _safe_url(url: str | None) -> str | None:
    """Only http(s) or site-relative links are rendered (never ``javascript:`` and the like)."""
    if url and (url.startswith(("https://", "http://")) or (url.startswith("/") and not url.startswith("//"))):
        return url
    return None


def render(kind: str, *, mailbox: str | None = None, retry_url: str | None = None,
           detail: str | None = None) -> str:
    text = PAGES.get(kind) or PAGES["error"]
    parts = [f"<p>{escape(text.what)}</p>"]
    if mailbox:
        parts.append(f'<p class="mailbox">Mailbox: <strong>{escape(mailbox)}</strong></p>')
    detail = clean_detail(detail)
    if detail:
        parts.append(f'<p class="detail">Details: {escape(detail)}</p>')
    parts.append(f"<h2>What you can do</h2>\n<p>{escape(text.next)}</p>")
    retry = _safe_url(retry_url)
    if retry:
        parts.append(f'<p><a class="button" href="{escape(retry, quote=True)}">Try again</a></p>')
    return _layout(text.title, "\n".join(parts))


class Choice(NamedTuple):
    """One option of the app chooser: the OAuth app's name, its cloud and the URL that picks it."""

    name: str
    cloud: str
    url: str


CLOUD_LABELS = {"global": "Microsoft 365", "gcc-high": "Microsoft 365 GCC High", "dod": "Microsoft 365 DoD",
                "china": "Microsoft 365 operated by 21Vianet"}


def chooser(choices: list[Choice], *, mailbox: str | None = None, stale: bool = False) -> str:
    """The app chooser (module docstring), HTTP 200. ``stale``: the person's pick is no longer available."""
    parts = []
    if stale:
        parts.append('<p class="detail">The sign-in you picked is not available any more. Please pick again.</p>')
    parts.append("<p>This app can connect mailboxes through more than one Microsoft sign-in. Pick the one for "
                 "your organisation; if you are not sure, ask the app that sent you here or your IT "
                 "administrator.</p>")
    if mailbox:
        parts.append(f'<p class="mailbox">Mailbox: <strong>{escape(mailbox)}</strong></p>')
    items = []
    for choice in choices:
        url = _safe_url(choice.url)
        if url is None:
            continue
        cloud = CLOUD_LABELS.get(choice.cloud, choice.cloud)
        items.append(f'<li><a class="button" href="{escape(url, quote=True)}">{escape(choice.name)}'
                     f'<span class="cloud">{escape(cloud)}</span></a></li>')
    parts.append('<ul class="choices">\n' + "\n".join(items) + "\n</ul>")
    return _layout("Choose how to sign in", "\n".join(parts))


def _layout(title: str, content: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<meta name="referrer" content="no-referrer">
<title>{escape(title)}</title>
<style>
:root{{color-scheme:light dark}}
body{{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f5f6f8;color:#1b1f24}}
main{{max-width:34rem;margin:10vh auto;padding:1.75rem 2rem;background:#fff;border-radius:8px;
     box-shadow:0 1px 4px #0002}}
h1{{font-size:1.4rem;margin:0 0 .75rem}}
h2{{font-size:1.05rem;margin:1.25rem 0 .25rem}}
.mailbox{{padding:.5rem .75rem;background:#eef2f7;border-radius:4px;overflow-wrap:anywhere}}
.detail{{font-size:.92rem;color:#4a525e;overflow-wrap:anywhere}}
a.button{{display:inline-block;margin-top:.5rem;padding:.55rem 1.1rem;background:#0f5cc0;color:#fff;border-radius:4px;
  text-decoration:none;font-weight:600}}
a.button:hover{{background:#0b4a9c}}
a.button:focus-visible{{outline:3px solid #f5a623;outline-offset:2px}}
ul.choices{{list-style:none;margin:1rem 0 0;padding:0}}
ul.choices a.button{{display:block;margin:.5rem 0;overflow-wrap:anywhere}}
.cloud{{display:block;font-size:.85rem;font-weight:400;opacity:.85}}
@media (prefers-color-scheme:dark){{body{{background:#15181d;color:#e6e9ee}} main{{background:#1f242b;box-shadow:none}}
  .mailbox{{background:#2a313a}} .detail{{color:#b3bac4}}}}
@media (max-width:36rem){{main{{margin:0;border-radius:0;box-shadow:none;min-height:100vh}}}}
</style>
</head>
<body>
<main>
<h1>{escape(title)}</h1>
{content}
</main>
</body>
</html>"""


def page(kind: str, *, mailbox: str | None = None, retry_url: str | None = None,
         detail: str | None = None) -> tuple[str, int]:
    """The HTML of ``kind`` and its HTTP status (``web.blueprints.hosted`` sends it with ``SECURITY_HEADERS``)."""
    if kind not in PAGES:
        log.warning("no hosted page for %r; showing the generic error page", kind)
    status = (PAGES.get(kind) or PAGES["error"]).status
    return render(kind, mailbox=mailbox, retry_url=retry_url, detail=detail), status
