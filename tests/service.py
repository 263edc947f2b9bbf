"""A test driver for the running service: an app registered with the fake identity platform, an API
token, and a browser-like session that follows the hosted flow by hand (so each hop can be asserted)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from shared.core.apps import register_app
from shared.settings import get_settings
from shared.storage.tables.apitokens import create_token
from shared.storage.tables.apps import OAuthApp

APP_REDIRECT = "https://app.example/connected"


class Browser(requests.Session):
    """A session that keeps cookies the way a browser does for one host.

    The Functions host sends every cookie with an empty ``domain=`` attribute (the Python worker turns
    "no Domain" into ``""``); browsers ignore an empty Domain, but ``http.cookiejar`` then refuses to send
    the cookie back. So cookies are kept here: name -> (value, path), dropped on ``max-age=0``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # this machine exports proxy and CA variables
        self.jar: dict[str, tuple[str, str]] = {}

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        path = urlsplit(url).path or "/"
        sent = "; ".join(f"{k}={v}" for k, (v, p) in self.jar.items() if path.startswith(p))
        headers = dict(kwargs.pop("headers", None) or {})
        if sent and url.startswith("http://localhost"):
            headers["Cookie"] = sent
        response = super().request(method, url, headers=headers, **kwargs)
        for line in response.raw.headers.getlist("Set-Cookie") if response.raw else []:
            self._keep(line)
        return response

    def _keep(self, line: str) -> None:
        name, _, rest = line.partition("=")
        value, *attrs = rest.split(";")
        attributes = {k.strip().lower(): v.strip() for k, _, v in (a.partition("=") for a in attrs)}
        if attributes.get("max-age") == "0":
            self.jar.pop(name.strip(), None)
        else:
            self.jar[name.strip()] = (value.strip(), attributes.get("path") or "/")


def session() -> Browser:
    return Browser()


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


@dataclass
class Service:
    url: str
    identity: Any
    token: str
    app: OAuthApp
    client_secret: str

    @classmethod
    def create(cls, url: str, identity: Any, base_scopes: str = "imap") -> Service:
        client_id, client_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
        identity.add_client(client_id, client_secret, [f"{url}/oauth"])
        app = register_app(name="test", client_id=client_id, client_secret_value=client_secret,
                           authority="organizations", base_scopes=base_scopes, settings=get_settings())
        token, _ = create_token("tests", ("api", "admin"))
        return cls(url, identity, token, app, client_secret)

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is not False:
            headers.setdefault("Authorization", f"Bearer {token or self.token}")
        return session().request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def form(self, **body: Any) -> requests.Response:
        body.setdefault("redirectUrl", APP_REDIRECT)
        return self.api("POST", "/v1/authentication/form", json=body)

    def link(self, **body: Any) -> str:
        response = self.form(**body)
        assert response.status_code == 200, response.text
        return response.json()["url"]

    def sign_in(self, link: str, user: Any = None, browser: Browser | None = None) -> SignIn:
        """Follow link -> Microsoft -> /oauth in one browser; stop at the redirect back to the app."""
        browser = browser or session()
        if user is not None:
            self.identity.sign_in_as(user)
        start = browser.get(link, allow_redirects=False, timeout=30)
        if start.status_code != 302:
            return SignIn(start, None, None)
        authorize = browser.get(start.headers["Location"], allow_redirects=False, timeout=30,
                                verify=self.identity.ca_bundle)
        assert authorize.status_code == 302, authorize.text
        callback = authorize.headers["Location"]
        assert callback.startswith(self.url + "/oauth?"), callback
        done = browser.get(callback, allow_redirects=False, timeout=30)
        return SignIn(start, callback, done)


@dataclass
class SignIn:
    start: requests.Response
    callback_url: str | None
    done: requests.Response | None

    @property
    def final(self) -> requests.Response:
        return self.done if self.done is not None else self.start

    @property
    def location(self) -> str:
        return self.final.headers.get("Location", "")

    @property
    def returned(self) -> dict[str, str]:
        """The query the app receives on its redirectUrl, all of it."""
        assert self.location.startswith(APP_REDIRECT), (self.final.status_code, self.location, self.final.text[:500])
        return query(self.location)

    @property
    def result(self) -> dict[str, str]:
        """The query the app receives on its redirectUrl, without the link id (``link``, on every redirect back:
        tests/test_return_verification.py is about it; ``returned`` has it)."""
        return {k: v for k, v in self.returned.items() if k != "link"}


def connect(service: Service, user: Any, **link: Any) -> str:
    """Sign ``user`` in with a fresh link; the account id (any error fails the test)."""
    result = service.sign_in(service.link(**link), user).result
    assert "error" not in result, result
    return result["account"]
