"""OAuth2 clients: create, list, revoke, authenticate.

``fhirgw clients create NAME --scope "…"`` registers a client and prints its credentials
once; only a hash of the secret is kept (scrypt, a random salt per client). A client may
instead (or also) register a JWKS of public keys for SMART Backend Services
(``private_key_jwt``): the secret is then never needed.

Lookups by ``client_id`` are cached for ``ttl`` seconds per process: revoking a client
takes effect at once in the process that revoked it and within ``ttl`` in the others
(access tokens are checked against the cached client on every request, so a revoked
client's tokens stop working too).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from .principal import ADMIN_SCOPE, Principal, Scopes, ScopeError
from .tables import auth_client

_N, _R, _P = 2 ** 14, 8, 1


class ClientError(ValueError):
    """Bad client settings (a message for the operator)."""


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "scrypt${}${}${}${}${}".format(_N, _R, _P, base64.b64encode(salt).decode(),
                                          base64.b64encode(digest).decode())


def check_secret(secret: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    scope: str
    organization: str | None
    purpose: str
    created_at: int
    revoked_at: int | None
    jwks: dict | None
    secret_hash: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def principal(self, scopes: Scopes, token_id: str | None = None) -> Principal:
        return Principal(self.client_id, self.name, scopes, self.organization, self.purpose,
                         token_id)

    def public(self) -> dict:
        """What ``clients list`` shows: never the secret or its hash."""
        return {"client_id": self.client_id, "name": self.name, "scope": self.scope,
                "organization": self.organization, "purpose": self.purpose,
                "auth": [m for m, on in (("client_secret_basic", self.secret_hash),
                                         ("private_key_jwt", self.jwks)) if on],
                "created": _iso(self.created_at),
                "revoked": _iso(self.revoked_at) if self.revoked_at else None}


def _iso(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1_000_000))


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def check_jwks(jwks) -> dict:
    """A JWKS of public RS384/ES384 signing keys, or ClientError saying what is wrong."""
    import jwt

    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ClientError("the JWKS must be a JSON object with a non-empty 'keys' array")
    for i, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
            raise ClientError(f"JWKS key {i}: kty must be RSA or EC")
        if any(k in key for k in ("d", "p", "q", "dp", "dq", "qi")):
            raise ClientError(f"JWKS key {i} holds a private key; register the public key only")
        if not key.get("kid"):
            raise ClientError(f"JWKS key {i} has no kid")
        try:
            jwt.PyJWK(key, algorithm="RS384" if key["kty"] == "RSA" else "ES384")
        except Exception as exc:  # PyJWT raises several types for unusable keys
            raise ClientError(f"JWKS key {i} ({key.get('kid')}) is unusable: {exc}") from None
    return jwks


class ClientStore:
    def __init__(self, engine: Engine, ttl: float = 2.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ management

    def create(self, name: str, scope: str, *, organization: str | None = None,
               jwks: dict | None = None, purpose: str = "TREAT", secret: bool = True
               ) -> tuple[Client, str | None]:
        """Register a client; returns it and its secret (shown once, None without one)."""
        name = (name or "").strip()
        if not name:
            raise ClientError("a client needs a name")
        if organization is not None:
            organization = organization.strip()
            if not organization.startswith("Organization/") or \
                    not organization.split("/", 1)[1]:
                raise ClientError("--organization takes a reference such as Organization/123")
        scopes = _checked_scopes(scope, organization)
        if jwks is not None:
            jwks = check_jwks(jwks)
        if not secret and jwks is None:
            raise ClientError("a client without a secret needs a JWKS (--jwks)")
        plain = secrets.token_urlsafe(32) if secret else None
        row = {"client_id": secrets.token_hex(12), "name": name, "scope": scopes.text(),
               "organization": organization, "purpose": purpose.strip() or "TREAT",
               "secret_hash": hash_secret(plain) if plain else None,
               "jwks": json.dumps(jwks) if jwks is not None else None,
               "created_at": _now_us(), "revoked_at": None}
        with self.engine.begin() as conn:
            conn.execute(insert(auth_client).values(**row))
        return _client(row), plain

    def list(self, include_revoked: bool = False) -> list[Client]:
        q = select(auth_client).order_by(auth_client.c.created_at)
        if not include_revoked:
            q = q.where(auth_client.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_client(r._mapping) for r in conn.execute(q)]

    def revoke(self, client_id: str) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(update(auth_client)
                             .where(auth_client.c.client_id == client_id,
                                    auth_client.c.revoked_at.is_(None))
                             .values(revoked_at=_now_us())).rowcount
        with self._lock:
            self._cache.pop(client_id, None)
        return bool(n)

    def set_scope(self, client_id: str, scope: str) -> Client:
        """Replace an active client's scopes. Its live tokens keep only what the new scopes
        still grant (checked on every request, within ``ttl`` in other processes)."""
        current = self.get(client_id)
        active = current is not None and current.active
        scopes = _checked_scopes(scope, current.organization if active else None)
        if not active:
            raise ClientError(f"no active client {client_id}")
        with self.engine.begin() as conn:
            conn.execute(update(auth_client).where(auth_client.c.client_id == client_id)
                         .values(scope=scopes.text()))
        with self._lock:
            self._cache.pop(client_id, None)
        found = self.get(client_id)
        assert found is not None
        return found

    def count_active(self) -> int:
        return len(self.list())

    # ------------------------------------------------------------ lookups

    def get(self, client_id: str) -> Client | None:
        """The client (revoked ones too), through the per-process cache."""
        now = time.monotonic()
        hit = self._cache.get(client_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        with self.engine.connect() as conn:
            row = conn.execute(select(auth_client)
                               .where(auth_client.c.client_id == client_id)).first()
        found = _client(row._mapping) if row is not None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[client_id] = (now, found)
        return found

    def authenticate_secret(self, client_id: str, secret: str) -> Client | None:
        client = self.get(client_id)
        if client is None or not client.active:
            # spend the same time as a real check, so timing does not tell ids apart
            check_secret(secret, _DUMMY_HASH)
            return None
        return client if check_secret(secret, client.secret_hash) else None


def _checked_scopes(scope: str, organization: str | None) -> Scopes:
    """The scopes a client may be given, or ClientError saying why not."""
    try:
        scopes = Scopes.parse(scope)
    except ScopeError as exc:
        raise ClientError(str(exc)) from None
    if not scopes.grants and not scopes.admin:
        raise ClientError("a client needs at least one scope, e.g. 'system/*.rs'")
    if scopes.admin and organization:
        raise ClientError(f"a partner client (bound to an Organization) cannot have "
                          f"{ADMIN_SCOPE}")
    return scopes


def _client(row) -> Client:
    return Client(row["client_id"], row["name"], row["scope"], row["organization"],
                  row["purpose"], row["created_at"], row["revoked_at"],
                  json.loads(row["jwks"]) if row["jwks"] else None, row["secret_hash"])


_DUMMY_HASH = hash_secret(secrets.token_urlsafe(8))
