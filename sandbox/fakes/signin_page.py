"""The sandbox's sign-in page: who signs in (and which mailboxes they can open), or cancel.

Shown by ``FakeIdentity`` in interactive mode in place of Microsoft's account picker and consent prompt.
Self-contained HTML (no scripts, no external assets), one form: each user is a submit button
(``choice=<object id>``), "Cancel" answers ``error=access_denied`` as a declined consent does on Entra.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .identity import FakeUser

SIGN_IN_PAGE_HEADERS = {
    # No form-action: the form's answer is a redirect to the app's /oauth, which form-action would block.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

# What a person is asked to consent to, in the words of Microsoft's consent prompt (roughly).
_SCOPE_WORDS = {
    "IMAP.AccessAsUser.All": "Read and write mail over IMAP",
    "SMTP.Send": "Send mail over SMTP",
    "POP.AccessAsUser.All": "Read mail over POP",
    "Mail.Read": "Read your mail",
    "Mail.ReadWrite": "Read and write your mail",
    "Mail.Send": "Send mail as you",
    "Mail.Read.Shared": "Read mail you can access, including shared mailboxes",
    "Mail.ReadWrite.Shared": "Read and write mail you can access, including shared mailboxes",
    "Mail.Send.Shared": "Send mail on behalf of others (shared mailboxes)",
    "User.Read": "Sign you in and read your profile",
    "offline_access": "Keep access to data you have given it access to",
    "openid": "Sign you in",
    "profile": "View your basic profile",
    "email": "View your email address",
}


def describe_scopes(scopes: Iterable[str]) -> list[str]:
    words: list[str] = []
    for scope in scopes:
        short = scope.rsplit("/", 1)[-1]
        text = _SCOPE_WORDS.get(short, short)
        if text not in words:
            words.append(text)
    return words


def _mailboxes(user: FakeUser) -> str:
    own = escape(user.email or user.upn)
    if user.shared_mailboxes:
        shared = ", ".join(escape(m) for m in user.shared_mailboxes)
        return f"Own mailbox {own}. Can open the shared mailboxes {shared}."
    return f"Own mailbox {own}. Cannot open any shared mailbox."


def render_sign_in_page(*, action: str, request: str, app_name: str, scopes: list[str],
                        users: list[FakeUser], login_hint: str | None = None) -> str:
    hint = (login_hint or "").strip().lower()

    def hinted(user: FakeUser) -> bool:
        return bool(hint) and hint in (user.upn.lower(), (user.email or "").lower())

    buttons = []
    for user in sorted(users, key=lambda u: not hinted(u)):  # stable: the hinted user first
        suggested = ' <span class="tag">suggested by the app</span>' if hinted(user) else ""
        note = f'<span class="note">{escape(user.note)}</span>' if user.note else ""
        buttons.append(
            f'<li><button type="submit" name="choice" value="{escape(user.oid, quote=True)}" class="user">'
            f'<span class="name">Sign in as {escape(user.name)}</span>{suggested}'
            f'<span class="upn">{escape(user.upn)}</span>'
            f'<span class="boxes">{_mailboxes(user)}</span>{note}</button></li>'
        )
    users_html = "\n".join(buttons) or "<li>No test users are registered.</li>"
    asks = "".join(f"<li>{escape(w)}</li>" for w in describe_scopes(scopes))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Sandbox sign-in - pick an account</title>
<style>
:root{{color-scheme:light dark}}
body{{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#eef1f5;color:#1b1f24}}
.banner{{background:#7a3e00;color:#fff;padding:.5rem 1rem;text-align:center;font-size:.95rem}}
main{{max-width:34rem;margin:4vh auto;padding:1.75rem 2rem;background:#fff;border-radius:8px;
  box-shadow:0 1px 4px #0003}}
h1{{font-size:1.4rem;margin:0 0 .25rem}}
h2{{font-size:1.05rem;margin:1.5rem 0 .5rem}}
ul.users{{list-style:none;padding:0;margin:0}}
ul.users li{{margin:.5rem 0}}
button.user{{display:block;width:100%;text-align:left;padding:.75rem 1rem;border:1px solid #b8c0cc;border-radius:6px;
  background:#fff;color:inherit;font:inherit;cursor:pointer}}
button.user:hover{{border-color:#0f5cc0;background:#f3f7fd}}
button:focus-visible{{outline:3px solid #f5a623;outline-offset:2px}}
.name{{font-weight:600}} .upn,.boxes,.note{{display:block;font-size:.92rem}} .upn{{color:#3d4652}}
.note{{color:#5a6270;font-style:italic}}
.tag{{font-size:.8rem;background:#e3ecfa;color:#0b4a9c;border-radius:3px;padding:0 .35rem;margin-left:.4rem}}
button.cancel{{margin-top:1.25rem;padding:.55rem 1.1rem;border:1px solid #8a1f11;border-radius:4px;background:#fff;
  color:#8a1f11;font:inherit;cursor:pointer}}
@media (prefers-color-scheme:dark){{body{{background:#15181d;color:#e6e9ee}}
  main,button.user,button.cancel{{background:#1f242b}}
  .upn{{color:#b9c1cc}} .note{{color:#a3abb6}} button.user:hover{{background:#26303d}}
  button.cancel{{color:#ff9c8a;border-color:#ff9c8a}}}}
</style>
</head>
<body>
<p class="banner" role="note"><strong>Sandbox</strong> - a local stand-in for Microsoft sign-in. No real account or
password is used.</p>
<main>
<h1>Pick an account</h1>
<p>to continue to <strong>{escape(app_name)}</strong></p>
<form method="post" action="{escape(action, quote=True)}">
<input type="hidden" name="request" value="{escape(request, quote=True)}">
<h2 id="users-heading">Test users</h2>
<ul class="users" aria-labelledby="users-heading">
{users_html}
</ul>
<h2>The app asks to</h2>
<ul>{asks}</ul>
<p>Signing in accepts these permissions for the sandbox app.</p>
<button type="submit" name="choice" value="cancel" class="cancel">Cancel (deny consent)</button>
</form>
</main>
</body>
</html>"""
