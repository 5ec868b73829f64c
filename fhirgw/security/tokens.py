"""Access tokens: the OAuth2 token endpoint's logic and bearer-token verification.

Grant: ``client_credentials`` only (backend services), with the client authenticated by

* ``client_secret_basic`` (``Authorization: Basic base64(id:secret)``; the same pair as
  ``client_secret_post`` form fields is accepted too), or
* SMART Backend Services ``private_key_jwt``: a client assertion (JWT, RS384 or ES384)
  signed by a key of the client's registered JWKS, with ``iss`` = ``sub`` = client_id,
  ``aud`` = the token endpoint URL, ``exp`` at most five minutes ahead and a ``jti`` never
  seen before (kept until the assertion expires: a replayed assertion is refused).

Access tokens are JWTs signed (HS256) with a key from the database, shared by every
process: ``iss`` the gateway's ``/auth``, ``aud`` the FHIR base URL, ``sub`` the client,
``scope`` the granted scopes (what was asked for, narrowed to what the client holds),
``exp`` after ``lifetime`` seconds, and a random ``jti``. A token is checked on every
request: signature, expiry, audience, issuer, and that its client is still active.

Errors never say which check failed (the log does): a caller learns only that its client
authentication or its token was refused.
"""
from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

import jwt
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .clients import Client, ClientStore
from .principal import PERMISSIONS, Principal, Scopes, ScopeError, parse_scope
from .tables import auth_jti, auth_key

log = logging.getLogger("fhirgw.auth")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
#: seconds of clock skew tolerated on exp / iat / nbf
LEEWAY = 30
#: the longest a client assertion may live (SMART Backend Services: five minutes)
MAX_ASSERTION_LIFETIME = 300


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error from the token endpoint."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def origin_of(base: str) -> str:
    """``http://h:p/fhir`` -> ``http://h:p`` (where ``/auth`` lives)."""
    return base[: -len("/fhir")] if base.endswith("/fhir") else base


def _client_failed() -> OAuthError:
    return OAuthError("invalid_client", "Client authentication failed", 401)


@dataclass(frozen=True)
class Issued:
    access_token: str
    expires_in: int
    scope: str

    def json(self) -> dict:
        return {"access_token": self.access_token, "token_type": "bearer",
                "expires_in": self.expires_in, "scope": self.scope}


def narrow(requested: str | None, granted: Scopes) -> Scopes:
    """What of the requested scopes the client holds (all it holds when nothing is asked
    for): each requested permission kept where a grant covers it, ``system/*.x`` becoming
    the client's own types; OAuthError ``invalid_scope`` when nothing is held.

    >>> narrow("system/*.rs system/Patient.c", Scopes.parse("system/Task.rus system/Patient.cr")).text()
    'system/Task.rs system/Patient.cr'
    """
    if not requested or not requested.strip():
        return granted
    grants = []
    admin = False
    for s in requested.split():
        if s == "fhirgw/admin":
            admin = admin or granted.admin
            continue
        try:
            rtype, perms = parse_scope(s)
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        if rtype != "*":
            held = "".join(p for p in perms if granted.allows(rtype, p))
            if held:
                grants.append((rtype, held))
            continue
        # system/*.x asked: what each grant gives of x (system/*.rs from a client holding
        # system/Task.rs is system/Task.rs)
        for gtype, gperms in granted.grants:
            held = "".join(p for p in perms if p in gperms)
            if held:
                grants.append((gtype, held))
    if not grants and not admin:
        raise OAuthError("invalid_scope", "None of the requested scopes is granted to this "
                                          "client")
    merged: dict[str, str] = {}
    for rtype, perms in grants:
        have = merged.get(rtype, "") + perms
        merged[rtype] = "".join(p for p in PERMISSIONS if p in have)
    return Scopes(tuple(merged.items()), admin)


class TokenService:
    def __init__(self, engine: Engine, clients: ClientStore, lifetime: int = 300) -> None:
        self.engine = engine
        self.clients = clients
        self.lifetime = lifetime
        self._keys: dict[str, bytes] = {}
        self._signing: str | None = None
        self._lock = threading.Lock()
        self._last_reload = 0.0
        self._last_purge = 0.0
        #: token text -> (principal, exp, audience, issuer, client scope) of tokens verified
        self._verified: dict[str, tuple[Principal, float, str, str, str]] = {}

    # ------------------------------------------------------------ signing keys

    def _load_keys(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(auth_key.c.kid, auth_key.c.secret, auth_key.c.created_at)
                                .order_by(auth_key.c.created_at)).all()
        if not rows:
            kid = secrets.token_hex(8)
            with self.engine.begin() as conn:
                conn.execute(insert(auth_key).values(kid=kid, secret=secrets.token_bytes(32),
                                                     created_at=int(time.time() * 1e6)))
            with self.engine.connect() as conn:
                rows = conn.execute(select(auth_key.c.kid, auth_key.c.secret,
                                           auth_key.c.created_at)
                                    .order_by(auth_key.c.created_at)).all()
        with self._lock:
            self._keys = {r.kid: bytes(r.secret) for r in rows}
            # the oldest key signs: every process agrees on it without coordination
            self._signing = rows[0].kid
            self._last_reload = time.monotonic()

    def _key(self, kid: str) -> bytes | None:
        if not self._keys:
            self._load_keys()
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._last_reload > 1.0:
            self._load_keys()  # made by another process since we loaded
            key = self._keys.get(kid)
        return key

    # ------------------------------------------------------------ the token endpoint

    def token(self, form: dict[str, str], authorization: str | None, *, token_url: str,
              audience: str, issuer: str) -> Issued:
        """Handle a token request (form fields, Authorization header) or raise OAuthError."""
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type",
                             "Only grant_type=client_credentials is supported")
        client = self._authenticate(form, authorization, token_url)
        scopes = narrow(form.get("scope"), Scopes.parse(client.scope))
        if not self._signing:
            self._load_keys()
        now = int(time.time())
        claims = {"iss": issuer, "aud": audience, "sub": client.client_id,
                  "client_id": client.client_id, "scope": scopes.text(), "iat": now,
                  "exp": now + self.lifetime, "jti": secrets.token_urlsafe(16)}
        token = jwt.encode(claims, self._keys[self._signing], algorithm="HS256",
                           headers={"kid": self._signing})
        return Issued(token, self.lifetime, scopes.text())

    def _authenticate(self, form: dict[str, str], authorization: str | None,
                      token_url: str) -> Client:
        assertion = form.get("client_assertion")
        if assertion is not None or form.get("client_assertion_type"):
            if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
                raise OAuthError("invalid_request",
                                 f"client_assertion_type must be {ASSERTION_TYPE} with a "
                                 "client_assertion")
            return self._assertion_client(assertion, token_url)
        client_id = secret = None
        if authorization and authorization[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
                client_id, _, secret = raw.partition(":")
                # RFC 6749 2.3.1: both parts are form-urlencoded before base64
                client_id, secret = unquote(client_id), unquote(secret)
            except (ValueError, UnicodeDecodeError):
                raise _client_failed() from None
        elif form.get("client_id") and form.get("client_secret"):
            client_id, secret = form["client_id"], form["client_secret"]
        if not client_id or secret is None:
            raise OAuthError("invalid_client", "Client authentication is required "
                                               "(client_secret_basic or private_key_jwt)", 401)
        client = self.clients.authenticate_secret(client_id, secret)
        if client is None:
            log.info("token refused: bad secret or unknown/revoked client %r", client_id[:64])
            raise _client_failed()
        return client

    def _assertion_client(self, assertion: str, token_url: str) -> Client:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            log.info("token refused: malformed client assertion")
            raise _client_failed() from None
        alg = header.get("alg")
        client_id = claims.get("iss")
        if alg not in ASSERTION_ALGORITHMS or not isinstance(client_id, str) or \
                claims.get("sub") != client_id:
            log.info("token refused: assertion alg %r / iss != sub", alg)
            raise _client_failed()
        client = self.clients.get(client_id)
        if client is None or not client.active or not client.jwks:
            log.info("token refused: assertion for unknown/revoked/keyless client %r",
                     client_id[:64])
            raise _client_failed()
        kty = "RSA" if alg.startswith("RS") else "EC"
        kid = header.get("kid")
        keys = [k for k in client.jwks["keys"]
                if k.get("kty") == kty and (kid is None or k.get("kid") == kid)]
        verified = None
        for key in keys:
            try:
                verified = jwt.decode(
                    assertion, jwt.PyJWK(key, algorithm=alg).key, algorithms=[alg],
                    audience=token_url, leeway=LEEWAY,
                    options={"require": ["iss", "sub", "aud", "exp", "jti"]})
                break
            except jwt.PyJWTError as exc:
                log.info("token refused for %s: %s", client_id, type(exc).__name__)
        if verified is None:
            raise _client_failed()
        now = time.time()
        if verified["exp"] - now > MAX_ASSERTION_LIFETIME + LEEWAY:
            log.info("token refused for %s: assertion lives too long", client_id)
            raise _client_failed()
        self._use_jti(client_id, str(verified["jti"]), int(verified["exp"]))
        return client

    def _use_jti(self, client_id: str, jti: str, exp: int) -> None:
        now_us = int(time.time() * 1_000_000)
        try:
            with self.engine.begin() as conn:
                if time.monotonic() - self._last_purge > 60:
                    conn.execute(delete(auth_jti).where(auth_jti.c.expires_at < now_us))
                    self._last_purge = time.monotonic()
                conn.execute(insert(auth_jti).values(
                    client_id=client_id, jti=jti[:255],
                    expires_at=(exp + LEEWAY) * 1_000_000))
        except IntegrityError:
            log.info("token refused for %s: replayed assertion jti", client_id)
            raise _client_failed() from None

    # ------------------------------------------------------------ bearer tokens

    def verify(self, token: str, *, audience: str, issuer: str) -> Principal | None:
        """The principal of a valid access token; None (and a log line) otherwise.

        A token verified once is remembered (by its exact text, for this audience and
        issuer) until it expires, so later requests cost a dict look-up instead of a JWT
        decode (~180 us); the client's revocation is still checked every time."""
        hit = self._verified.get(token)
        if hit is not None:
            principal, exp, aud, iss, scope = hit
            if exp > time.time() and aud == audience and iss == issuer:
                client = self.clients.get(principal.client_id)
                if client is not None and client.active and client.scope == scope:
                    return principal
            self._verified.pop(token, None)  # expired, revoked or its scopes changed
        found = self._verify(token, audience=audience, issuer=issuer)
        if found is not None:
            if len(self._verified) >= 50_000:
                self._verified.clear()
            self._verified[token] = found
            return found[0]
        return None

    def _verify(self, token: str, *, audience: str, issuer: str
                ) -> tuple[Principal, float, str, str, str] | None:
        try:
            header = jwt.get_unverified_header(token)
            key = self._key(header.get("kid") or "")
            if key is None or header.get("alg") != "HS256":
                log.info("bearer token refused: unknown key or algorithm")
                return None
            claims = jwt.decode(token, key, algorithms=["HS256"], audience=audience,
                                issuer=issuer, leeway=LEEWAY,
                                options={"require": ["exp", "iat", "sub", "aud", "iss"]})
        except jwt.PyJWTError as exc:
            log.info("bearer token refused: %s", type(exc).__name__)
            return None
        client = self.clients.get(claims["sub"])
        if client is None or not client.active:
            log.info("bearer token refused: client %r unknown or revoked", claims["sub"][:64])
            return None
        try:
            scopes = narrow(claims.get("scope"), Scopes.parse(client.scope))
        except OAuthError:
            return None  # the client no longer holds any of the token's scopes
        # remembered until it expires (the leeway is for skew, not reuse), with the
        # client's scopes as they were: a change of them means checking again
        return (client.principal(scopes, claims.get("jti")), float(claims["exp"]),
                audience, issuer, client.scope)
