"""Authentication: httpx ``Auth`` classes that put a bearer token on every request.

* :class:`BearerToken`: a fixed token (``Client(url, auth="abc")`` is the same).
* :class:`ClientCredentials`: OAuth2 client credentials (RFC 6749 §4.4) with a client secret.
* :class:`SmartBackendServices`: SMART Backend Services (client credentials with a signed
  JWT client assertion, RS384 or ES384; needs ``PyJWT`` and ``cryptography``).

The OAuth2 classes fetch a token when they have none or it expires within ``leeway``
seconds, and fetch a new one once when the FHIR server answers 401. The token request is
sent through the client's own transport (so a test transport or respx sees it too). A token
endpoint that refuses raises :class:`~fhirgw.client.AuthError`.
"""
from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ._exceptions import AuthError

__all__ = ["BearerToken", "ClientCredentials", "SmartBackendServices", "auth_from"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class BearerToken(httpx.Auth):
    """A fixed bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


class _OAuth2(httpx.Auth):
    """A cached access token from a token endpoint, refreshed before it expires."""

    requires_response_body = True

    def __init__(self, token_url: str, *, scope: str | None = None, leeway: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.token_url = token_url
        self.scope = scope
        self.leeway = leeway
        self.clock = clock
        self.access_token: str | None = None
        self.expires_at: float | None = None

    def _token_form(self) -> dict[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _token_headers(self) -> dict[str, str]:
        return {}

    def token_request(self) -> httpx.Request:
        form = self._token_form()
        if self.scope:
            form["scope"] = self.scope
        return httpx.Request("POST", self.token_url, data=form,
                             headers={"Accept": "application/json", **self._token_headers()})

    @property
    def expired(self) -> bool:
        if self.access_token is None:
            return True
        return self.expires_at is not None and self.clock() >= self.expires_at - self.leeway

    def accept_token_response(self, response: httpx.Response) -> None:
        """Store the token from a token endpoint's answer (or raise AuthError)."""
        try:
            data: Any = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            data = {}
        if response.status_code != 200 or not isinstance(data, dict) \
                or not isinstance(data.get("access_token"), str):
            error = data.get("error") if isinstance(data, dict) else None
            detail = data.get("error_description") if isinstance(data, dict) else None
            text = ": ".join(str(x) for x in (error, detail) if x) or response.text[:200]
            raise AuthError(f"token endpoint {self.token_url} answered "
                            f"{response.status_code}: {text}", status=response.status_code,
                            error=str(error) if error else None)
        self.access_token = data["access_token"]
        expires_in = data.get("expires_in")
        self.expires_at = self.clock() + float(expires_in) if isinstance(expires_in, (int, float)) \
            else None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        fresh = False
        if self.expired:
            self.accept_token_response((yield self.token_request()))
            fresh = True
        request.headers["Authorization"] = f"Bearer {self.access_token}"
        response = yield request
        if response.status_code == 401 and not fresh:
            # the token was revoked or expired early: one new token, one more try
            self.accept_token_response((yield self.token_request()))
            request.headers["Authorization"] = f"Bearer {self.access_token}"
            yield request


class ClientCredentials(_OAuth2):
    """OAuth2 client credentials with a client secret (``client_secret_basic`` by default,
    ``auth_method="post"`` sends it in the form)."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, *,
                 scope: str | None = None, auth_method: str = "basic", leeway: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(token_url, scope=scope, leeway=leeway, clock=clock)
        if auth_method not in ("basic", "post"):
            raise ValueError("auth_method must be 'basic' or 'post'")
        self.client_id = client_id
        self.client_secret = client_secret
        self.auth_method = auth_method

    def _token_form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if self.auth_method == "post":
            form.update(client_id=self.client_id, client_secret=self.client_secret)
        return form

    def _token_headers(self) -> dict[str, str]:
        if self.auth_method != "basic":
            return {}
        # RFC 6749 §2.3.1: form-encode id and secret, then HTTP Basic
        pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


class SmartBackendServices(_OAuth2):
    """SMART Backend Services: a JWT signed with the client's private key asks for a token.

    ``private_key`` is a PEM string/bytes (or a ``cryptography`` key); ``algorithm`` is
    ``RS384`` (RSA) or ``ES384`` (EC P-384); ``key_id`` is the ``kid`` of the public key in
    the JWKS the server knows; ``scope`` e.g. ``"system/Patient.read system/Task.write"``.
    The assertion lives 5 minutes (the most SMART allows) and has a fresh ``jti`` each time.
    """

    def __init__(self, token_url: str, client_id: str, private_key: str | bytes | Any, *,
                 key_id: str | None = None, algorithm: str = "RS384", scope: str | None = None,
                 jku: str | None = None, lifetime: int = 300, leeway: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(token_url, scope=scope, leeway=leeway, clock=clock)
        if algorithm not in ("RS384", "ES384"):
            raise ValueError("SMART backend services use RS384 or ES384")
        self.client_id = client_id
        self.private_key = private_key
        self.key_id = key_id
        self.algorithm = algorithm
        self.jku = jku
        self.lifetime = min(lifetime, 300)

    def client_assertion(self) -> str:
        try:
            import jwt
        except ImportError:  # pragma: no cover - depends on the environment
            raise AuthError("SMART backend services need PyJWT and cryptography "
                            "(pip install 'pyjwt[crypto]')") from None
        now = int(self.clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
                  "exp": now + self.lifetime, "iat": now, "jti": uuid.uuid4().hex}
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.key_id:
            headers["kid"] = self.key_id
        if self.jku:
            headers["jku"] = self.jku
        return str(jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers=headers))

    def _token_form(self) -> dict[str, str]:
        return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.client_assertion()}


def auth_from(auth: str | httpx.Auth | None) -> httpx.Auth | None:
    """``Client(auth=...)``: a string is a bearer token; an httpx ``Auth`` is used as is."""
    if auth is None or isinstance(auth, httpx.Auth):
        return auth
    if isinstance(auth, str):
        return BearerToken(auth)
    raise TypeError("auth must be a bearer token string or an httpx.Auth "
                    "(BearerToken, ClientCredentials, SmartBackendServices)")
