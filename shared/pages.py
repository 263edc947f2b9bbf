"""Hosted HTML pages: self-contained (no external assets), plain words, no internal ids or stack traces."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Optional

import azure.functions as func

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class PageText:
    title: str
    body: str
    status: int = 400


PAGES: dict[str, PageText] = {
    "link_invalid": PageText("This sign-in link is not valid",
                             "The link is incomplete or was changed after it was created. Ask the app that "
                             "sent it for a new link."),
    "link_expired": PageText("This sign-in link has expired",
                             "Sign-in links work for a limited time. Ask the app that sent it for a new link.", 410),
    "link_used": PageText("This sign-in link was already used",
                          "The mailbox has already been connected with this link. If you need to connect it "
                          "again, ask the app for a new link.", 409),
    "session_unknown": PageText("This sign-in session is not known",
                                "The sign-in was already completed, or it was started somewhere else. Start again "
                                "from the link the app gave you."),
    "session_expired": PageText("This sign-in took too long",
                                "For your security a sign-in must be finished within a few minutes. Start again "
                                "from the link the app gave you.", 410),
    "browser_mismatch": PageText("Finish signing in in the same browser",
                                 "This sign-in was started in another browser or window, or your browser blocked "
                                 "its cookie. Open the link again in this browser and sign in there."),
    "unavailable": PageText("The service is busy",
                            "We could not reach a service we depend on. Nothing was changed; please try again "
                            "in a minute.", 503),
}


def render(kind: str, *, mailbox: Optional[str] = None, retry_url: Optional[str] = None,
           detail: Optional[str] = None) -> str:
    text = PAGES[kind]
    parts = [f"<p>{escape(text.body)}</p>"]
    if mailbox:
        parts.append(f"<p>Mailbox: <strong>{escape(mailbox)}</strong></p>")
    if detail:
        parts.append(f"<p>{escape(detail)}</p>")
    if retry_url:
        parts.append(f'<p><a class="button" href="{escape(retry_url, quote=True)}">Try again</a></p>')
    return _layout(text.title, "\n".join(parts))


def _layout(title: str, content: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{escape(title)}</title>
<style>
body{{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f5f6f8;color:#1b1f24}}
main{{max-width:32rem;margin:10vh auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 4px #0002}}
h1{{font-size:1.35rem;margin-top:0}}
a.button{{display:inline-block;padding:.55rem 1.1rem;background:#0f5cc0;color:#fff;border-radius:4px;text-decoration:none}}
a.button:focus{{outline:3px solid #f5a623;outline-offset:2px}}
</style>
</head>
<body><main role="main"><h1>{escape(title)}</h1>
{content}
</main></body>
</html>"""


def page_response(kind: str, **kwargs: Optional[str]) -> func.HttpResponse:
    return func.HttpResponse(render(kind, **kwargs), status_code=PAGES[kind].status,
                             headers=dict(SECURITY_HEADERS), mimetype="text/html", charset="utf-8")
