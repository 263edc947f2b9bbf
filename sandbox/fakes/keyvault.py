"""A fake of the Key Vault secrets and keys REST API, over HTTPS, for the real ``azure-keyvault-secrets``
and ``azure-keyvault-keys`` clients.

What it reproduces (the parts the service depends on):

* The challenge flow: a request without ``Authorization`` gets ``401`` with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"``; any bearer token is then accepted. (Clients must be built with
  ``verify_challenge_resource=False``: the resource is not the fake's domain.)
* Secrets: ``PUT /secrets/{name}`` (a new version each time, ``tags``, ``contentType``, ``attributes``),
  ``GET /secrets/{name}[/{version}]``, ``GET /secrets`` (one page), ``GET /secrets/{name}/versions``.
* Soft delete with purge protection (the default, as production vaults are deployed):
  ``DELETE /secrets/{name}`` moves every version to the deleted collection and answers a
  DeletedSecretBundle; ``GET /deletedsecrets/{name}``; ``POST /deletedsecrets/{name}/recover``;
  ``DELETE /deletedsecrets/{name}`` (purge) answers 403 while purge protection is on.
* ``PUT`` of a soft-deleted name: ``409`` ``{"error": {"code": "Conflict", "message": ...,
  "innererror": {"code": "ObjectIsDeletedButRecoverable"}}}``, the real service's shape (set
  ``flat_conflict_code = True`` to put the specific code at ``error.code`` instead).
* Asynchronous delete and recovery, when asked for: ``deletion_lag`` / ``recovery_lag`` = number of
  requests for which a just-deleted name answers ``409 ObjectIsBeingDeleted`` to writes (and 404 on
  ``/deletedsecrets``) / a just-recovered secret still answers 404 to reads.
* Key Vault's name rule (``[0-9a-zA-Z-]{1,127}``): 400 ``BadParameter``. Missing: 404
  ``SecretNotFound``. A request without ``api-version``: 400.
* Keys (envelope mode's key-encryption key), RSA only, each with versions (real RSA keys made with
  ``cryptography``; ``create_key(name, size=2048)`` does it from Python and returns the versioned kid):
  ``POST /keys/{name}/create`` (``kty`` RSA, ``key_size``, ``key_ops``), ``GET /keys/{name}[/{version}]``
  (the JWK's public part: ``kid``, ``kty``, ``n``, ``e`` base64url, ``key_ops``; and ``attributes``),
  ``POST /keys/{name}/{version}/wrapkey`` and ``/unwrapkey`` (``{"alg": "RSA-OAEP-256" | "RSA-OAEP",
  "value": base64url}`` -> ``{"kid": <versioned>, "value": base64url}``). An empty version
  (``/keys/{name}/``, ``/keys/{name}//wrapkey``: what ``CryptographyClient`` sends for an unversioned key
  id) means the latest. Unknown key or version: 404 ``KeyNotFound``; a value that does not unwrap, or
  another algorithm: 400 ``BadParameter``; an operation not in the key's ``key_ops``: 403 ``Forbidden``.
* Fault injection: ``throttle_next(n, retry_after=1)`` answers the next ``n`` authenticated requests
  (secrets and keys alike) with 429 and ``Retry-After``; ``fail_next(n, status=503, code=..., inner=...,
  method=...)`` with any error answer.

``requests`` records every request as ``(method, path)`` (challenge requests included, secrets and keys),
so tests can count round trips; ``bodies`` keeps the JSON bodies of secret PUTs (never the keys' bodies,
which hold key material). All state is guarded by one lock.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sandbox.fakes.tls import HTTPSServer

NAME_RULE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
RESOURCE = "https://vault.azure.net"
RETENTION_DAYS = 90
KEY_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")  # the service's default for RSA
WRAP_ALGORITHMS = ("RSA-OAEP-256", "RSA-OAEP")


class FakeCredential:
    """A ``TokenCredential`` that hands out a fixed token and records what was asked for."""

    def __init__(self, token: str = "fake-kv-token", lifetime: int = 3600) -> None:
        self.token = token
        self.lifetime = lifetime
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs: Any):
        from azure.core.credentials import AccessToken

        with self._lock:
            self.calls.append((scopes, dict(kwargs)))
        return AccessToken(self.token, int(time.time()) + self.lifetime)


class FakeKeyVault:
    def __init__(self, tenant_id: str | None = None, *, purge_protection: bool = True) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.purge_protection = purge_protection
        self.flat_conflict_code = False
        self.deletion_lag = 0
        self.recovery_lag = 0
        self.lock = threading.RLock()
        # name -> list of versions (oldest first); each version is a dict (see _put).
        self.secrets: dict[str, list[dict[str, Any]]] = {}
        # name -> {"versions": [...], "deletedDate": int, "scheduledPurgeDate": int}
        self.deleted: dict[str, dict[str, Any]] = {}
        # key name -> list of versions (oldest first): {"version", "private" (RSA key), "key_ops", "attributes"}
        self.keys: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.tokens_seen: list[str] = []
        self._throttle = 0
        self._throttle_retry_after = "1"
        self._fail = 0
        self._fail_status = 503
        self._fail_body: dict[str, Any] = {}
        self._fail_method: str | None = None
        self._deleting: dict[str, int] = {}
        self._recovering: dict[str, int] = {}
        self.server = HTTPSServer(_make_handler(self))

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> FakeKeyVault:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> FakeKeyVault:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ca_bundle(self) -> str:
        return self.server.ca.ca_bundle

    # -- test controls ---------------------------------------------------------------------------------

    def throttle_next(self, n: int, retry_after: int | float | str = 1) -> None:
        with self.lock:
            self._throttle = n
            self._throttle_retry_after = str(retry_after)

    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        code: str = "InternalServerError",
        inner: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``n`` authenticated requests (only those of ``method`` when given) with
        ``status`` and ``{"error": {"code": code, "innererror": {"code": inner}}}``."""
        with self.lock:
            self._fail = n
            self._fail_status = status
            self._fail_body = _error(code, "Injected failure.", inner=inner)
            self._fail_method = method

    def reset(self) -> None:
        """Forget every secret, counter and injected fault (one server can serve many tests)."""
        with self.lock:
            self.secrets.clear()
            self.deleted.clear()
            self.keys.clear()
            self.requests.clear()
            self.bodies.clear()
            self.tokens_seen.clear()
            self._deleting.clear()
            self._recovering.clear()
            self._throttle = self._fail = 0
            self.flat_conflict_code = False
            self.deletion_lag = self.recovery_lag = 0

    def create_key(self, name: str, size: int = 2048, *, key_ops: tuple[str, ...] = ("wrapKey", "unwrapKey")) -> str:
        """A new version of the RSA key ``name`` (as Bicep's or ``az keyvault key create``); its versioned kid."""
        if not NAME_RULE.match(name):
            raise ValueError(f"invalid key name {name!r}")
        with self.lock:
            return self._new_key_version(name, size, list(key_ops))["key"]["kid"]

    def request_count(self) -> int:
        with self.lock:
            return len(self.requests)

    def current(self, name: str) -> dict[str, Any] | None:
        """The newest live version of ``name`` (a copy), or ``None``."""
        with self.lock:
            versions = self.secrets.get(name)
            return dict(versions[-1]) if versions else None

    # -- request handling (called from server threads) -------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        path = parts.path
        query = parse_qs(parts.query)
        with self.lock:
            self.requests.append((method, path))
            auth = headers.get("Authorization") or ""
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                challenge = (
                    f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
                    f'resource="{RESOURCE}"'
                )
                missing = _error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
                return 401, {"WWW-Authenticate": challenge}, missing
            self.tokens_seen.append(auth[7:].strip())
            if self._throttle > 0:
                self._throttle -= 1
                return (
                    429,
                    {"Retry-After": self._throttle_retry_after},
                    _error("Throttled", "Request was not processed because too many requests were received."),
                )
            if self._fail > 0 and self._fail_method in (None, method):
                self._fail -= 1
                return self._fail_status, {}, self._fail_body
            if not query.get("api-version"):
                return 400, {}, _error("BadParameter", "The api-version query parameter is missing.")
            try:
                payload = json.loads(body) if body else {}
            except ValueError:
                return 400, {}, _error("BadParameter", "The request body is not valid JSON.")
            return self._route(method, [unquote(p) for p in path.split("/")[1:]], payload)

    def _route(self, method: str, segs: list[str], body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        # segs: ["secrets"], ["secrets", name], ["secrets", name, version|""|"versions"], ["deletedsecrets", ...]
        if segs and segs[-1] == "" and len(segs) == 2:
            segs = segs[:-1]
        if segs == ["secrets"] and method == "GET":
            items = [self._item(n, v[-1]) for n, v in sorted(self.secrets.items())]
            return 200, {}, {"value": items, "nextLink": None}
        if segs == ["deletedsecrets"] and method == "GET":
            items = [self._deleted_bundle(n, with_value=False) for n in sorted(self.deleted)]
            return 200, {}, {"value": items, "nextLink": None}
        if len(segs) >= 2 and segs[0] == "keys":
            return self._route_keys(method, segs[1], segs[2:], body)
        if len(segs) < 2 or segs[0] not in ("secrets", "deletedsecrets"):
            return 404, {}, _error("NotFound", "The requested resource was not found.")
        name = segs[1]
        if not NAME_RULE.match(name):
            return 400, {}, _error(
                "BadParameter",
                "The request URI contains an invalid name: " + name[:40] + ". Follow this link for more information on "
                "naming: https://aka.ms/keyvault/naming",
            )
        rest = segs[2:]
        if segs[0] == "secrets":
            if method == "PUT" and not rest:
                return self._put(name, body)
            if method == "GET" and (not rest or (len(rest) == 1 and rest[0] != "versions")):
                return self._get(name, rest[0] if rest else "")
            if method == "GET" and rest == ["versions"]:
                return self._versions(name)
            if method == "DELETE" and not rest:
                return self._delete(name)
        else:
            if method == "GET" and not rest:
                return self._get_deleted(name)
            if method == "POST" and rest == ["recover"]:
                return self._recover(name)
            if method == "DELETE" and not rest:
                return self._purge(name)
        return 405, {}, _error("MethodNotAllowed", f"{method} is not supported here.")

    def _put(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if self._tick(self._deleting, name):
            return 409, {}, self._conflict("ObjectIsBeingDeleted", f"Secret {name} is currently being deleted.")
        if name in self.deleted:
            return 409, {}, self._conflict(
                "ObjectIsDeletedButRecoverable",
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the secret can only be recovered or purged.",
            )
        if self._tick(self._recovering, name):
            return 409, {}, self._conflict("ObjectIsBeingRecovered", f"Secret {name} is currently being recovered.")
        value = body.get("value")
        if not isinstance(value, str):
            return 400, {}, _error("BadParameter", "Property value is required.")
        tags = body.get("tags")
        if tags is not None and (not isinstance(tags, dict) or len(tags) > 15):
            return 400, {}, _error("BadParameter", "Tags are invalid.")
        self.bodies.append((name, body))
        now = int(time.time())
        attributes = {"enabled": True, **(body.get("attributes") or {})}
        attributes.update({"created": now, "updated": now, "recoveryLevel": self._recovery_level(),
                           "recoverableDays": RETENTION_DAYS})
        version = {
            "version": uuid.uuid4().hex,
            "value": value,
            "contentType": body.get("contentType"),
            "tags": tags,
            "attributes": attributes,
        }
        self.secrets.setdefault(name, []).append(version)
        return 200, {}, self._bundle(name, version, with_value=True)

    def _get(self, name: str, version_id: str) -> tuple[int, dict[str, str], Any]:
        versions = self.secrets.get(name)
        if self._tick(self._recovering, name) or not versions:
            return 404, {}, _not_found(name)
        if not version_id:
            version = versions[-1]
        else:
            version = next((v for v in versions if v["version"] == version_id), None)
            if version is None:
                return 404, {}, _not_found(f"{name}/{version_id}")
        if not version["attributes"].get("enabled", True):
            return 403, {}, _error("Forbidden", "Operation get is not allowed on a disabled secret.",
                                   inner="SecretDisabled")
        return 200, {}, self._bundle(name, version, with_value=True)

    def _versions(self, name: str) -> tuple[int, dict[str, str], Any]:
        versions = self.secrets.get(name) or []
        return 200, {}, {"value": [self._item(name, v, with_version=True) for v in versions], "nextLink": None}

    def _delete(self, name: str) -> tuple[int, dict[str, str], Any]:
        versions = self.secrets.pop(name, None)
        if not versions:
            return 404, {}, _not_found(name)
        now = int(time.time())
        self.deleted[name] = {
            "versions": versions,
            "deletedDate": now,
            "scheduledPurgeDate": now + RETENTION_DAYS * 86400,
        }
        if self.deletion_lag:
            self._deleting[name] = self.deletion_lag
        return 200, {}, self._deleted_bundle(name, with_value=False)

    def _get_deleted(self, name: str) -> tuple[int, dict[str, str], Any]:
        if self._tick(self._deleting, name) or name not in self.deleted:
            return 404, {}, _error("SecretNotFound", f"Deleted Secret not found: {name}")
        return 200, {}, self._deleted_bundle(name, with_value=False)

    def _recover(self, name: str) -> tuple[int, dict[str, str], Any]:
        if self._tick(self._deleting, name):
            return 409, {}, self._conflict("ObjectIsBeingDeleted", f"Secret {name} is currently being deleted.")
        entry = self.deleted.pop(name, None)
        if entry is None:
            return 404, {}, _error("SecretNotFound", f"Deleted Secret not found: {name}")
        self.secrets[name] = entry["versions"]
        if self.recovery_lag:
            self._recovering[name] = self.recovery_lag
        return 200, {}, self._bundle(name, entry["versions"][-1], with_value=False)

    def _purge(self, name: str) -> tuple[int, dict[str, str], Any]:
        if name not in self.deleted:
            return 404, {}, _error("SecretNotFound", f"Deleted Secret not found: {name}")
        if self.purge_protection:
            return 403, {}, _error(
                "Forbidden",
                'Operation "purge" is not allowed because purge protection is enabled for this vault. Key Vault '
                "service will automatically purge it after the retention period has passed.",
            )
        del self.deleted[name]
        return 204, {}, None

    # -- keys ------------------------------------------------------------------------------------------

    def _route_keys(
        self, method: str, name: str, rest: list[str], body: dict[str, Any]
    ) -> tuple[int, dict[str, str], Any]:
        # rest: [] | [version] | ["create"] | [version, "wrapkey" | "unwrapkey"]; "" as version = the latest.
        if not NAME_RULE.match(name):
            return 400, {}, _error("BadParameter", "The request URI contains an invalid name: " + name[:40] + ".")
        if method == "POST" and rest == ["create"]:
            return self._create_key(name, body)
        if method == "GET" and len(rest) <= 1:
            version = self._key_version(name, rest[0] if rest else "")
            if version is None:
                return 404, {}, _key_not_found(name)
            return 200, {}, self._key_bundle(version)
        if method == "POST" and len(rest) == 2 and rest[1] in ("wrapkey", "unwrapkey"):
            version = self._key_version(name, rest[0])
            if version is None:
                return 404, {}, _key_not_found(f"{name}/{rest[0]}" if rest[0] else name)
            return self._key_operation(version, rest[1], body)
        return 405, {}, _error("MethodNotAllowed", f"{method} is not supported here.")

    def _create_key(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if body.get("kty") not in ("RSA", "RSA-HSM"):
            return 400, {}, _error("BadParameter", "This fake creates RSA keys only (kty RSA or RSA-HSM).")
        size = body.get("key_size") or 2048
        if size not in (2048, 3072, 4096):
            return 400, {}, _error("BadParameter", "key_size must be 2048, 3072 or 4096.")
        ops = body.get("key_ops") or list(KEY_OPS)
        if not isinstance(ops, list) or any(op not in KEY_OPS for op in ops):
            return 400, {}, _error("BadParameter", "Invalid key_ops.")
        version = self._new_key_version(name, size, ops, enabled=(body.get("attributes") or {}).get("enabled", True))
        return 200, {}, self._key_bundle(version)

    def _new_key_version(self, name: str, size: int, key_ops: list[str], *, enabled: bool = True) -> dict[str, Any]:
        from cryptography.hazmat.primitives.asymmetric import rsa

        private = rsa.generate_private_key(public_exponent=65537, key_size=size)
        numbers = private.public_key().public_numbers()
        version_id = uuid.uuid4().hex
        now = int(time.time())
        version = {
            "version": version_id,
            "private": private,
            "key": {
                "kid": f"{self.url}/keys/{name}/{version_id}",
                "kty": "RSA",
                "key_ops": list(key_ops),
                "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            },
            "attributes": {"enabled": enabled, "created": now, "updated": now, "exportable": False,
                           "recoveryLevel": self._recovery_level(), "recoverableDays": RETENTION_DAYS},
        }
        self.keys.setdefault(name, []).append(version)
        return version

    def _key_version(self, name: str, version_id: str) -> dict[str, Any] | None:
        versions = self.keys.get(name) or []
        if not version_id:
            return versions[-1] if versions else None
        return next((v for v in versions if v["version"] == version_id), None)

    def _key_operation(self, version: dict[str, Any], op: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        operation = "wrapKey" if op == "wrapkey" else "unwrapKey"
        if operation not in version["key"]["key_ops"]:
            return 403, {}, _error("Forbidden", f"Operation {operation} is not permitted on this key.")
        if not version["attributes"].get("enabled", True):
            return 403, {}, _error("Forbidden", f"Operation {operation} is not allowed on a disabled key.")
        alg = body.get("alg")
        if alg not in WRAP_ALGORITHMS:
            return 400, {}, _error("BadParameter", "Invalid or unsupported algorithm for this key.")
        try:
            value = _b64url_decode(body.get("value"))
        except ValueError:
            return 400, {}, _error("BadParameter", "Property value is not valid base64url.")
        algorithm = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()
        oaep = padding.OAEP(mgf=padding.MGF1(algorithm=algorithm), algorithm=algorithm, label=None)
        try:
            if op == "wrapkey":
                out = version["private"].public_key().encrypt(value, oaep)
            else:
                out = version["private"].decrypt(value, oaep)
        except ValueError:
            return 400, {}, _error("BadParameter", "The parameter value is invalid: it could not be processed "
                                   "with this key and algorithm.")
        return 200, {}, {"kid": version["key"]["kid"], "value": _b64url(out)}

    @staticmethod
    def _key_bundle(version: dict[str, Any]) -> dict[str, Any]:
        return {"key": dict(version["key"], key_ops=list(version["key"]["key_ops"])),
                "attributes": dict(version["attributes"])}

    # -- shapes ----------------------------------------------------------------------------------------

    def _recovery_level(self) -> str:
        return "Recoverable" if self.purge_protection else "Recoverable+Purgeable"

    def _conflict(self, code: str, message: str) -> dict[str, Any]:
        if self.flat_conflict_code:
            return {"error": {"code": code, "message": message}}
        return _error("Conflict", message, inner=code)

    def _bundle(self, name: str, version: dict[str, Any], *, with_value: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f"{self.url}/secrets/{name}/{version['version']}",
            "attributes": dict(version["attributes"]),
        }
        if with_value:
            out["value"] = version["value"]
        if version.get("contentType") is not None:
            out["contentType"] = version["contentType"]
        if version.get("tags") is not None:
            out["tags"] = dict(version["tags"])
        return out

    def _item(self, name: str, version: dict[str, Any], with_version: bool = False) -> dict[str, Any]:
        item = self._bundle(name, version, with_value=False)
        if not with_version:
            item["id"] = f"{self.url}/secrets/{name}"
        return item

    def _deleted_bundle(self, name: str, *, with_value: bool) -> dict[str, Any]:
        entry = self.deleted[name]
        out = self._bundle(name, entry["versions"][-1], with_value=with_value)
        out.update(
            {
                "recoveryId": f"{self.url}/deletedsecrets/{name}",
                "deletedDate": entry["deletedDate"],
                "scheduledPurgeDate": entry["scheduledPurgeDate"],
            }
        )
        return out

    @staticmethod
    def _tick(counters: dict[str, int], name: str) -> bool:
        left = counters.get(name, 0)
        if left <= 0:
            return False
        if left == 1:
            del counters[name]
        else:
            counters[name] = left - 1
        return True


def _error(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError("not a base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        raise ValueError("not base64url") from None


def _key_not_found(name: str) -> dict[str, Any]:
    return _error(
        "KeyNotFound",
        f"A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be "
        "able to recover it using the correct recovery command. For help resolving this issue, please see "
        "https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def _not_found(name: str) -> dict[str, Any]:
    return _error(
        "SecretNotFound",
        f"A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you "
        "may be able to recover it using the correct recovery command. For help resolving this issue, please see "
        "https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def _make_handler(fake: FakeKeyVault) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; without TCP_NODELAY each answer waits for a delayed ACK.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = fake.handle(self.command, self.path, self.headers, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-keyvault-service-version", "fake")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if data:
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
            pass

    return Handler
