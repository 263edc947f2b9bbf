"""Issue 12 point 9: the page for a callback without its browser-binding cookie hands out nothing.

Anyone who learns a ``state`` value (a shared screen, a proxy log, a browser history) can send ``/oauth?state=..``
from a browser of their own. That page used to offer "Try again" with the full signed link; now it names neither
the link nor the mailbox, and says to open the link again from the app or message that gave it."""

from __future__ import annotations

from urllib.parse import quote

from tests.service import Browser, query


def test_a_callback_without_the_cookie_does_not_hand_out_the_link(service, identity):
    user = identity.add_user("eve-target@contoso.com", email="eve-target@contoso.com")
    identity.sign_in_as(user)
    link = service.link(email="support@contoso.com", delegated=True)
    params = query(link)
    browser = Browser()
    start = browser.get(link, allow_redirects=False, timeout=30)
    callback = browser.get(start.headers["Location"], allow_redirects=False, timeout=30,
                           verify=identity.ca_bundle).headers["Location"]
    state = query(callback)["state"]

    for url in (f"{service.url}/oauth?state={state}&code=x", callback):  # a made-up code, and the real one
        page = Browser().get(url, allow_redirects=False, timeout=30)  # another browser: no cookie
        assert page.status_code == 400 and "Finish signing in in the same browser" in page.text, page.text[:300]
        for secret in (params["data"], params["sig"], quote(params["data"]), quote(params["sig"])):
            assert secret not in page.text
        assert "/accounts/new" not in page.text and "Try again" not in page.text
        assert "support@contoso.com" not in page.text  # nothing about the sign-in either
        assert "Open the sign-in link again from the app" in page.text

    # The person's own browser still finishes: the stranger's requests consumed nothing.
    done = browser.get(callback, allow_redirects=False, timeout=30)
    assert done.status_code == 302 and query(done.headers["Location"]).get("state") == "new", done.text[:300]
