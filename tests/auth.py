"""Real credentials for tests of a gateway with auth on (the default).

Clients are registered in the app's own client store (``app.state.auth.clients``) and tokens
come from the real token endpoint (``POST /auth/token``, client_secret_basic) over whatever
HTTP the test uses (a ``TestClient``, an ``httpx.Client``, or a URL), never minted by hand.
An access token's audience is the FHIR base URL of the request that got it, so get the
token from the same host you then call.

    cid, secret = grant(app)                          # system/*.cruds fhirgw/admin
    token = token_for(live.base, cid, secret)         # or token_for(test_client, ...)
    httpx.get(f"{live.base}/Patient", headers=bearer(token))
    authorize(test_client, app)                       # admin token in its default headers
"""
from __future__ import annotations

import base64
import itertools
from urllib.parse import quote, urlsplit

import httpx

#: what the first-start admin client gets, and the tests' default
ADMIN_SCOPE = "system/*.cruds fhirgw/admin"

_names = itertools.count(1)


def grant(app, scope: str = ADMIN_SCOPE, organization: str | None = None, *,
          name: str | None = None, **kw) -> tuple[str, str]:
    """Register a client (with a secret) on ``app``; returns (client_id, secret)."""
    client, secret = app.state.auth.clients.create(name or f"test-client-{next(_names)}",
                                                   scope, organization=organization, **kw)
    assert secret is not None
    return client.client_id, secret


def origin(url: str | httpx.URL) -> str:
    """``http://h:p/fhir`` (or any URL on the host) -> ``http://h:p``."""
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}"


def token_url(base: str | httpx.URL) -> str:
    """The token endpoint of the gateway at ``base`` (a FHIR base or the origin)."""
    return f"{origin(base)}/auth/token"


def basic(client_id: str, secret: str) -> dict[str, str]:
    """``Authorization: Basic`` for client_secret_basic (RFC 6749 2.3.1 encoding)."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def request_token(http_or_base, client_id: str, secret: str, *, scope: str | None = None,
                  headers: dict | None = None) -> httpx.Response:
    """POST the token request (client credentials, client_secret_basic); the raw answer.

    ``http_or_base``: a ``TestClient``/``httpx.Client`` with a ``base_url`` (the request goes
    through it), or a URL of the gateway (sent with a one-off ``httpx.post``)."""
    form = {"grant_type": "client_credentials"}
    if scope is not None:
        form["scope"] = scope
    hdrs = {**basic(client_id, secret), "Accept": "application/json", **(headers or {})}
    if isinstance(http_or_base, httpx.Client):
        if not str(http_or_base.base_url).strip("/"):
            raise ValueError("this HTTP client has no base_url: pass the gateway's URL")
        return http_or_base.post(token_url(http_or_base.base_url), data=form, headers=hdrs)
    return httpx.post(token_url(http_or_base), data=form, headers=hdrs, timeout=30)


def token_for(http_or_base, client_id: str, secret: str, *, scope: str | None = None) -> str:
    """An access token from the gateway's token endpoint (see ``request_token``)."""
    r = request_token(http_or_base, client_id, secret, scope=scope)
    assert r.status_code == 200, f"token request refused: {r.status_code} {r.text}"
    return r.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_token(app, http_or_base, scope: str = ADMIN_SCOPE,
                organization: str | None = None) -> str:
    """A new client with ``scope`` on ``app``, and a token for it from ``http_or_base``."""
    cid, secret = grant(app, scope, organization)
    return token_for(http_or_base, cid, secret)


def authorize(http: httpx.Client, app, scope: str = ADMIN_SCOPE) -> str:
    """Put a token (of a new ``scope`` client) in ``http``'s default headers; the token."""
    token = admin_token(app, http, scope)
    http.headers["Authorization"] = f"Bearer {token}"
    return token


def credentials(base: str, client_id: str, secret: str, *, scope: str | None = None):
    """The SDK's ``ClientCredentials`` (an ``httpx.Auth``) for the gateway at ``base``:
    fetches its token from the real endpoint on first use, renews it when it expires."""
    from fhirgw.client import ClientCredentials

    return ClientCredentials(token_url(base), client_id, secret, scope=scope)


# ---------------------------------------------------------------- SMART private_key_jwt

def signing_key(alg: str = "RS384", kid: str | None = None):
    """A new key pair for SMART Backend Services: (private key, public JWK with kid/alg)."""
    import uuid

    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    if alg == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        raise ValueError(alg)
    jwk.pop("key_ops", None)
    return key, {**jwk, "kid": kid or uuid.uuid4().hex[:16], "alg": alg}


def client_assertion(key, jwk: dict, client_id: str, aud: str, *, lifetime: int = 300,
                     jti: str | None = None, **claims) -> str:
    """A client assertion JWT: iss = sub = client_id, aud = the token endpoint URL."""
    import time
    import uuid

    import jwt

    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now,
            "exp": now + lifetime, "jti": jti or uuid.uuid4().hex, **claims}
    return jwt.encode(body, key, algorithm=jwk["alg"], headers={"kid": jwk["kid"], "typ": "JWT"})


def grant_jwks(app, *jwks: dict, scope: str = ADMIN_SCOPE, secret: bool = False,
               organization: str | None = None) -> str:
    """Register a private_key_jwt client with these public keys; its client_id."""
    client, _ = app.state.auth.clients.create(f"test-smart-{next(_names)}", scope,
                                              organization=organization,
                                              jwks={"keys": list(jwks)}, secret=secret)
    return client.client_id


# ---------------------------------------------------------------- fhirgw serve's first start

def first_start_credentials(output: str) -> tuple[str, str] | None:
    """The admin client_id/client_secret ``fhirgw serve`` prints on its first start (no
    client in the database yet), or None when the output has none."""
    import re

    cid = re.search(r"^\s*client_id:\s+(\S+)\s*$", output, re.M)
    secret = re.search(r"^\s*client_secret:\s+(\S+)\s*$", output, re.M)
    return (cid.group(1), secret.group(1)) if cid and secret else None
