"""Where events go: targets registered through the API (``webhooks`` table) or configured in
``MC_WEBHOOK_URLS``, and the secret each one is signed with (read once per process)."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from shared.checks import check_webhook_url
from shared.schemas import WebhookSource
from shared.settings import Settings
from shared.storage.secrets.base import SecretNotFound
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import webhooks
from shared.storage.tables.webhooks import WebhookRow

log = logging.getLogger("mailbox_connect.webhooks")

SETTINGS_SECRET = "mc-webhook-secret"  # Key Vault secret of the MC_WEBHOOK_URLS targets (Azure)


@dataclass(frozen=True)
class Target:
    id: str
    url: str
    events: tuple[str, ...]  # empty: every event
    source: WebhookSource
    secret_name: str | None = None  # api targets: the secret store name
    description: str | None = None
    created: datetime | None = None

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


def settings_target_id(url: str) -> str:
    return "cfg" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def settings_targets(settings: Settings) -> list[Target]:
    found = []
    for url in settings.webhook_url_list:
        try:
            check_webhook_url(url, local=not settings.in_azure)
        except ValueError as exc:
            log.error("MC_WEBHOOK_URLS: a URL is ignored: %s", exc)
            continue
        found.append(Target(settings_target_id(url), url, (), "settings"))
    return found


def api_target(row: WebhookRow) -> Target:
    return Target(row.id, row.url, tuple(row.events), "api", row.secretName, row.description, row.created)


def all_targets(settings: Settings) -> list[Target]:
    return settings_targets(settings) + [api_target(r) for r in sorted(webhooks.list_webhooks(), key=lambda r: r.id)]


_secret_lock = threading.Lock()
_secrets: dict[tuple[str, str | None, str | None], str] = {}


def secret_of(target: Target, settings: Settings) -> str:
    """The target's signing secret, read once per process; ``SecretNotFound`` when none is configured."""
    key = (target.id, target.secret_name, settings.webhook_secret)
    with _secret_lock:
        if key in _secrets:
            return _secrets[key]
    if target.source == "api":
        value = get_secret_store(settings).get(target.secret_name or "")
    elif settings.webhook_secret:
        value = settings.webhook_secret
    elif settings.key_vault_url:
        value = get_secret_store(settings).get(SETTINGS_SECRET)
    else:
        raise SecretNotFound("set MC_WEBHOOK_SECRET (or Key Vault secret mc-webhook-secret) for MC_WEBHOOK_URLS")
    with _secret_lock:
        _secrets[key] = value
    return value


def forget_secrets() -> None:
    with _secret_lock:
        _secrets.clear()
