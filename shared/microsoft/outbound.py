"""The process's HTTP sessions for outbound calls to Microsoft (MSAL, Graph), one per CA bundle.

``trust_env=False``: this machine (and many CI hosts) export REQUESTS_CA_BUNDLE and proxy variables,
which would otherwise override ``verify`` and send tokens through a proxy nobody configured for us.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import requests

TIMEOUT = (5, 15)  # connect, read (seconds): MSAL ignores its own ``timeout`` once it is given a session
_lock = threading.Lock()
_sessions: dict[str | None, requests.Session] = {}


def http_session(settings: Settings) -> requests.Session:
    with _lock:
        session = _sessions.get(settings.ca_bundle)
        if session is None:
            import requests

            session = requests.Session()
            session.trust_env = False
            session.verify = settings.ca_bundle or True
            session.request = functools.partial(session.request, timeout=TIMEOUT)  # type: ignore[method-assign]
            _sessions[settings.ca_bundle] = session
        return session
