"""Authentication: the token endpoint (client secrets and SMART private_key_jwt), bearer
tokens on the FHIR API, scopes, discovery, FHIRGW_AUTH=disabled, and ``fhirgw clients``.

Most cases use the in-process TestClient; the token endpoint and a SMART backend-services
flow also run over real HTTP (uvicorn on 127.0.0.1), and ``fhirgw serve`` in a subprocess.
Every token is obtained from the real token endpoint, except those forged on purpose.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from fhirgw.app import create_app
from fhirgw.config import Settings
from tests.auth import (
    basic,
    bearer,
    client_assertion,
    grant,
    grant_jwks,
    request_token,
    signing_key,
    token_for,
    token_url,
)
from tests.integration.conftest import bind_free_port, start_server

FJ = {"Content-Type": "application/fhir+json"}
FHIR_ACCEPT = {"Accept": "application/fhir+json"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
BASE = "http://testserver/fhir"
PATIENT = {"resourceType": "Patient", "name": [{"family": "Auth"}]}


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def app(db_url):
    application = create_app(Settings(database_url=db_url, base_url=BASE, worker=False))
    yield application
    application.state.router.repo.engine.dispose()


@pytest.fixture
def http(app):
    """A TestClient with no credentials of its own."""
    with TestClient(app, base_url="http://testserver") as c:
        yield c


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(FHIR base, app) of a gateway over real HTTP (SQLite)."""
    sock = bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    application = create_app(Settings(
        database_url=f"sqlite:///{tmp_path_factory.mktemp('auth')}/auth.db", base_url=base,
        worker=False))
    stop = start_server(application, sock)
    try:
        yield base, application
    finally:
        stop()
        application.state.router.repo.engine.dispose()


def smart_token_endpoint(http_or_base) -> str:
    """The token endpoint a SMART client finds in the discovery document."""
    if isinstance(http_or_base, httpx.Client):
        r = http_or_base.get("/.well-known/smart-configuration")
    else:
        r = httpx.get(http_or_base.removesuffix("/fhir") + "/.well-known/smart-configuration")
    assert r.status_code == 200, r.text
    return r.json()["token_endpoint"]


def assertion_token(http, assertion: str, **form) -> httpx.Response:
    return http.post(token_url(http.base_url), data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion, **form})


def outcome_text(r: httpx.Response) -> str:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]["diagnostics"]


# ---------------------------------------------------------------- the token endpoint

def test_token_with_client_secret_basic(http, app):
    cid, secret = grant(app, "system/*.cruds")
    r = request_token(http, cid, secret)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"].lower() == "bearer"
    assert body["expires_in"] == app.state.settings.token_lifetime
    assert body["scope"] == "system/*.cruds"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == cid and claims["aud"] == BASE
    assert claims["iss"] == "http://testserver/auth" and claims["jti"]
    created = http.post("/fhir/Patient", json=PATIENT, headers={**FJ, **bearer(
        body["access_token"])})
    assert created.status_code == 201, created.text


def test_token_with_client_secret_post(http, app):
    cid, secret = grant(app, "system/*.rs")
    r = http.post("/auth/token", data={"grant_type": "client_credentials", "client_id": cid,
                                       "client_secret": secret})
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/*.rs"
    assert http.get("/fhir/Patient", headers=bearer(r.json()["access_token"])).status_code == 200


def test_token_endpoint_over_real_http(live):
    base, application = live
    cid, secret = grant(application, "system/Patient.cruds")
    for r in (request_token(base, cid, secret),
              httpx.post(token_url(base), data={"grant_type": "client_credentials",
                                               "client_id": cid, "client_secret": secret})):
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        created = httpx.post(f"{base}/Patient", json=PATIENT, headers={**FJ, **bearer(token)})
        assert created.status_code == 201, created.text
    refused = request_token(base, cid, "wrong")
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"


def test_refused_clients_get_one_and_the_same_answer(http, app):
    cid, secret = grant(app, "system/*.rs")
    revoked, revoked_secret = grant(app, "system/*.rs")
    app.state.auth.clients.revoke(revoked)
    attempts = {"wrong secret": (cid, secret + "x"), "unknown client": ("no-such-client", secret),
                "revoked client": (revoked, revoked_secret)}
    bodies, outcomes = set(), set()
    for what, (client_id, pw) in attempts.items():
        r = request_token(http, client_id, pw)
        assert r.status_code == 401, what
        assert r.json()["error"] == "invalid_client", what
        assert r.headers["www-authenticate"].startswith("Basic")
        assert r.headers["cache-control"] == "no-store"
        bodies.add(r.content)
        fhir = request_token(http, client_id, pw, headers=FHIR_ACCEPT)
        assert fhir.status_code == 401
        assert fhir.headers["content-type"].startswith("application/fhir+json")
        assert fhir.json()["issue"][0]["code"] == "login"
        outcomes.add(fhir.content)
    # nothing tells a wrong secret from an unknown or revoked client
    assert len(bodies) == 1 and len(outcomes) == 1, bodies | outcomes
    text = next(iter(bodies)).decode().lower()
    assert "secret" not in text and "unknown" not in text and "revoked" not in text
    # the same pair as form fields (client_secret_post) is refused alike
    r = http.post("/auth/token", data={"grant_type": "client_credentials", "client_id": cid,
                                       "client_secret": "nope"})
    assert r.status_code == 401 and r.content in bodies


def test_token_endpoint_request_errors(http, app):
    cid, secret = grant(app, "system/*.rs")
    r = http.post("/auth/token", data={"grant_type": "password"}, headers=basic(cid, secret))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = http.post("/auth/token", json={"grant_type": "client_credentials"},
                  headers=basic(cid, secret))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = http.post("/auth/token", data={"grant_type": "client_credentials"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


# ---------------------------------------------------------------- bearer tokens

def _forged(app, *, kid: str | None = None, key: bytes | None = None, **claims) -> str:
    """A token signed like the server's own (HS256 with a key from ``auth_key``)."""
    from fhirgw.security.tables import auth_key

    with app.state.router.repo.engine.connect() as conn:
        row = conn.execute(select(auth_key.c.kid, auth_key.c.secret)
                           .order_by(auth_key.c.created_at)).first()
    return jwt.encode(claims, key if key is not None else bytes(row.secret), algorithm="HS256",
                      headers={"kid": kid or row.kid})


def test_bad_bearer_tokens_are_refused_alike(http, app):
    cid, secret = grant(app, "system/*.cruds")
    good = token_for(http, cid, secret)
    assert http.get("/fhir/Patient", headers=bearer(good)).status_code == 200
    claims = jwt.decode(good, options={"verify_signature": False})
    now = int(time.time())

    revoked_id, revoked_secret = grant(app, "system/*.cruds")
    revoked = token_for(http, revoked_id, revoked_secret)
    assert http.get("/fhir/Patient", headers=bearer(revoked)).status_code == 200
    app.state.auth.clients.revoke(revoked_id)

    # a token for this gateway reached under another name: another audience
    other_app = create_app(Settings(database_url=str(app.state.router.repo.engine.url),
                                    base_url="", worker=False))
    with TestClient(other_app, base_url="http://elsewhere.test") as elsewhere:
        elsewhere_token = token_for(elsewhere, cid, secret)
    other_app.state.router.repo.engine.dispose()
    assert jwt.decode(elsewhere_token, options={"verify_signature": False})["aud"] == \
        "http://elsewhere.test/fhir"

    bad = {
        "garbage": "not-a-jwt",
        "expired": _forged(app, **{**claims, "iat": now - 7200, "exp": now - 3600}),
        "wrong audience": elsewhere_token,
        "wrong issuer": _forged(app, **{**claims, "iss": "http://evil.test/auth"}),
        "wrong signature": _forged(app, key=os.urandom(32), **claims),
        "unknown key id": _forged(app, kid="no-such-kid", **claims),
        "unsigned": jwt.encode(claims, None, algorithm="none"),
        "revoked client": revoked,
    }
    diagnostics = set()
    for what, token in bad.items():
        for method, path, body in (("GET", "/fhir/Patient", None),
                                   ("POST", "/fhir/Patient", PATIENT)):
            r = http.request(method, path, json=body, headers={**FJ, **bearer(token)})
            assert r.status_code == 401, (what, method, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer"), what
            assert 'error="invalid_token"' in r.headers["www-authenticate"], what
            diagnostics.add(outcome_text(r))
    # one message for all: it does not say which check failed
    assert len(diagnostics) == 1, diagnostics
    text = diagnostics.pop().lower()
    for leak in ("audience", "signature", "revoked", "issuer", "kid", "key"):
        assert leak not in text, text
    # the good token still works, and nothing was written by the refused POSTs
    r = http.get("/fhir/Patient?name=Auth", headers=bearer(good))
    assert r.status_code == 200 and r.json().get("total", 0) == 0


def test_missing_token(http):
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        r = http.get("/fhir/Patient", headers=headers)
        assert r.status_code == 401
        # RFC 6750 3.1: no credentials, no error code; says how to get a token
        assert r.headers["www-authenticate"] == 'Bearer realm="fhirgw"'
        assert "/auth/token" in outcome_text(r)
    assert http.post("/fhir", json={"resourceType": "Bundle", "type": "batch"},
                     headers=FJ).status_code == 401


def test_an_expiring_token(db_url, monkeypatch):
    """A real token with a lifetime of one second dies once the clock leeway has passed."""
    from fhirgw.security import tokens

    application = create_app(Settings(database_url=db_url, base_url=BASE, worker=False,
                                      token_lifetime=1))
    try:
        with TestClient(application, base_url="http://testserver") as c:
            cid, secret = grant(application, "system/*.rs")
            r = request_token(c, cid, secret)
            assert r.json()["expires_in"] == 1
            token = r.json()["access_token"]
            assert c.get("/fhir/Patient", headers=bearer(token)).status_code == 200
            exp = jwt.decode(token, options={"verify_signature": False})["exp"]
            # rather than also waiting out the 30 s of tolerated clock skew
            monkeypatch.setattr(tokens, "LEEWAY", 0)
            time.sleep(max(0.0, exp + 1.1 - time.time()))
            r = c.get("/fhir/Patient", headers=bearer(token))
            assert r.status_code == 401
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
    finally:
        application.state.router.repo.engine.dispose()


def test_admin_api_needs_the_admin_scope(http, app):
    reader = token_for(http, *grant(app, "system/*.rs"))
    admin = token_for(http, *grant(app, "system/*.cruds fhirgw/admin"))
    assert http.get("/admin/metrics").status_code == 401
    assert http.get("/admin/metrics", headers=bearer("garbage")).status_code == 401
    assert http.get("/admin/metrics", headers=bearer(reader)).status_code == 403
    assert http.get("/admin/metrics", headers=bearer(admin)).status_code == 200
    # operator actions and refusals leave AuditEvents
    assert http.post("/admin/outbox/retry", headers=bearer(admin)).json() == {"retried": 0}
    app.state.audit.flush()
    found = http.get("/fhir/AuditEvent", params={"outcome": "0", "_count": "200"},
                     headers=bearer(admin)).json()
    descs = [e["resource"].get("outcomeDesc", "") for e in found.get("entry", [])]
    assert any(d.startswith("admin: retried 0 dead") for d in descs)
    refused = http.get("/fhir/AuditEvent", params={"outcome": "4", "_count": "200"},
                       headers=bearer(admin)).json()
    assert sum("admin API" in e["resource"].get("outcomeDesc", "")
               for e in refused.get("entry", [])) >= 3


# ---------------------------------------------------------------- scopes

def test_scope_narrowing(http, app):
    cid, secret = grant(app, "system/*.cruds")
    r = request_token(http, cid, secret, scope="system/Patient.rs")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/Patient.rs"
    token = r.json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == \
        "system/Patient.rs"
    assert http.get("/fhir/Patient", headers=bearer(token)).status_code == 200
    assert http.post("/fhir/Patient", json=PATIENT,
                     headers={**FJ, **bearer(token)}).status_code == 403
    assert http.get("/fhir/Observation", headers=bearer(token)).status_code == 403
    # SMART v1 spelling, narrowed alike
    v1 = request_token(http, cid, secret, scope="system/Observation.read")
    assert v1.status_code == 200 and v1.json()["scope"] == "system/Observation.rs"


def test_ungranted_or_malformed_scopes_are_invalid_scope(http, app):
    cid, secret = grant(app, "system/Patient.rs")
    for scope in ("system/Observation.rs", "fhirgw/admin", "patient/*.read", "nonsense",
                  "system/Patient.rs?name=x"):
        r = request_token(http, cid, secret, scope=scope)
        assert r.status_code == 400, (scope, r.text)
        assert r.json()["error"] == "invalid_scope", scope
    # asking for more than held gives what is held (and no more)
    r = request_token(http, cid, secret, scope="system/Patient.cruds")
    assert r.status_code == 200 and r.json()["scope"] == "system/Patient.rs"


# ---------------------------------------------------------------- SMART private_key_jwt

@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_private_key_jwt(http, app, alg):
    key, jwk = signing_key(alg)
    cid = grant_jwks(app, jwk, scope="system/*.cruds")
    aud = smart_token_endpoint(http)
    assert aud == "http://testserver/auth/token"
    assertion = client_assertion(key, jwk, cid, aud)
    r = assertion_token(http, assertion, scope="system/Patient.cruds")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/Patient.cruds"
    token = r.json()["access_token"]
    assert http.post("/fhir/Patient", json=PATIENT,
                     headers={**FJ, **bearer(token)}).status_code == 201
    # the same assertion again (its jti seen): refused
    replay = assertion_token(http, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    # a new assertion (new jti) is fine
    assert assertion_token(http, client_assertion(key, jwk, cid, aud)).status_code == 200


def test_private_key_jwt_refusals(http, app):
    key, jwk = signing_key("RS384")
    other_key, other_jwk = signing_key("ES384")
    cid = grant_jwks(app, jwk, scope="system/*.rs")
    aud = smart_token_endpoint(http)
    refused = {
        "unregistered key": client_assertion(other_key, {**other_jwk, "kid": jwk["kid"]},
                                             cid, aud),
        "unregistered key id": client_assertion(other_key, other_jwk, cid, aud),
        "lives an hour": client_assertion(key, jwk, cid, aud, lifetime=3600),
        "expired": client_assertion(key, jwk, cid, aud, lifetime=-120),
        "wrong audience": client_assertion(key, jwk, cid, "http://testserver/other/token"),
        "iss is not sub": client_assertion(key, jwk, cid, aud, sub="someone-else"),
        "unknown client": client_assertion(key, jwk, "no-such-client", aud),
        "not a JWT": "abc.def",
    }
    bodies = set()
    for what, assertion in refused.items():
        r = assertion_token(http, assertion)
        assert r.status_code == 401, (what, r.text)
        assert r.json()["error"] == "invalid_client", what
        bodies.add(r.content)
    assert len(bodies) == 1, bodies
    # a client with keys only has no secret to fall back on
    r = request_token(http, cid, "")
    assert r.status_code == 401
    # a wrong assertion type is a malformed request
    r = http.post("/auth/token", data={"grant_type": "client_credentials",
                                       "client_assertion_type": "urn:other",
                                       "client_assertion": client_assertion(key, jwk, cid, aud)})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    # and after all that, a proper assertion still works
    assert assertion_token(http, client_assertion(key, jwk, cid, aud)).status_code == 200


def test_private_key_jwt_of_a_revoked_client(http, app):
    key, jwk = signing_key("ES384")
    cid = grant_jwks(app, jwk, scope="system/*.rs")
    aud = smart_token_endpoint(http)
    token = assertion_token(http, client_assertion(key, jwk, cid, aud)).json()["access_token"]
    app.state.auth.clients.revoke(cid)
    assert assertion_token(http, client_assertion(key, jwk, cid, aud)).status_code == 401
    assert http.get("/fhir/Patient", headers=bearer(token)).status_code == 401


def test_private_key_jwt_over_real_http(live):
    base, application = live
    key, jwk = signing_key("RS384")
    cid = grant_jwks(application, jwk, scope="system/Patient.cruds")
    aud = smart_token_endpoint(base)
    assert aud == token_url(base)
    r = httpx.post(aud, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                              "client_assertion_type": ASSERTION_TYPE,
                              "client_assertion": client_assertion(key, jwk, cid, aud)})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert httpx.get(f"{base}/Patient", headers=bearer(token)).status_code == 200
    assert httpx.post(f"{base}/Patient", json=PATIENT,
                      headers={**FJ, **bearer(token)}).status_code == 403


def test_jwks_registration_is_checked(app):
    from fhirgw.security.clients import ClientError

    key, jwk = signing_key("RS384")
    private = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    for bad in ({"keys": []}, {"keys": [{**jwk, "kid": ""}]},
                {"keys": [{**private, "kid": "k"}]}, {"keys": [{"kty": "oct", "kid": "k"}]}):
        with pytest.raises(ClientError):
            app.state.auth.clients.create("bad-jwks", "system/*.rs", jwks=bad, secret=False)
    with pytest.raises(ClientError):
        app.state.auth.clients.create("no-way-in", "system/*.rs", secret=False)


# ---------------------------------------------------------------- discovery and open paths

def test_smart_configuration(http):
    r = http.get("/.well-known/smart-configuration")
    assert r.status_code == 200
    conf = r.json()
    assert conf["token_endpoint"] == "http://testserver/auth/token"
    assert conf["issuer"] == "http://testserver/auth"
    assert conf["grant_types_supported"] == ["client_credentials"]
    assert {"private_key_jwt", "client_secret_basic"} <= \
        set(conf["token_endpoint_auth_methods_supported"])
    assert set(conf["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert "client-confidential-asymmetric" in conf["capabilities"]
    assert "system/*.cruds" in conf["scopes_supported"]
    # also found relative to the FHIR base (SMART App Launch 2.0)
    assert http.get("/fhir/.well-known/smart-configuration").json() == conf


def test_metadata_is_open(http):
    r = http.get("/fhir/metadata")
    assert r.status_code == 200
    security = r.json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = security["extension"][0]
    assert uris["url"].endswith("/oauth-uris")
    assert uris["extension"] == [{"url": "token", "valueUri": "http://testserver/auth/token"}]
    assert http.head("/fhir/metadata").status_code == 200
    # only GET/HEAD of metadata: anything else there needs a token
    assert http.post("/fhir/metadata", json={}, headers=FJ).status_code == 401


# ---------------------------------------------------------------- FHIRGW_AUTH=disabled

def test_auth_disabled_in_process(db_url, monkeypatch):
    monkeypatch.setenv("FHIRGW_AUTH", "disabled")
    application = create_app(Settings(database_url=db_url, base_url=BASE, worker=False))
    try:
        assert not application.state.auth.enabled
        with TestClient(application, base_url="http://testserver") as c:
            created = c.post("/fhir/Patient", json=PATIENT, headers=FJ)
            assert created.status_code == 201, created.text
            assert c.get(f"/fhir/Patient/{created.json()['id']}").status_code == 200
            assert c.get("/admin/metrics").status_code == 200
            assert "DISABLED" in c.get("/fhir/metadata").json()["rest"][0]["security"][
                "description"]
    finally:
        application.state.router.repo.engine.dispose()
    with pytest.raises(ValueError, match="FHIRGW_AUTH"):
        Settings(database_url=db_url, auth="off").auth_enabled  # noqa: B018


FHIRGW = str(Path(sys.executable).parent / "fhirgw")


def test_serve_refuses_auth_disabled_off_loopback(tmp_path):
    env = {**os.environ, "FHIRGW_AUTH": "disabled",
           "FHIRGW_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    env.pop("FHIRGW_BASE_URL", None)
    r = subprocess.run([FHIRGW, "serve", "--host", "0.0.0.0", "--port", "1"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "FHIRGW_AUTH=disabled" in r.stderr and "0.0.0.0" in r.stderr, r.stderr
    assert "local development" in r.stderr
    assert not (tmp_path / "x.db").exists()     # refused before touching anything
    bad = subprocess.run([FHIRGW, "serve", "--port", "1"], capture_output=True, text=True,
                         env={**env, "FHIRGW_AUTH": "maybe"}, timeout=60)
    assert bad.returncode != 0 and "FHIRGW_AUTH" in bad.stderr


# ---------------------------------------------------------------- fhirgw clients

def test_clients_cli_create_list_revoke(app, http):
    from fhirgw.cli import app as cli

    db = str(app.state.router.repo.engine.url.render_as_string(hide_password=False))
    runner = CliRunner()
    name = "cli-" + uuid.uuid4().hex[:6]
    created = runner.invoke(cli, ["clients", "create", name, "--scope",
                                  "system/Patient.rs system/Task.rus", "--database", db])
    assert created.exit_code == 0, created.output
    out = json.loads(created.stdout)
    cid, secret = out["client_id"], out["client_secret"]
    assert out["scope"] == "system/Patient.rs system/Task.rus" and out["name"] == name

    listed = runner.invoke(cli, ["clients", "list", "--database", db])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = [r for r in rows if r["client_id"] == cid]
    assert len(mine) == 1 and mine[0]["revoked"] is None
    assert mine[0]["auth"] == ["client_secret_basic"]
    assert secret not in listed.stdout and "scrypt" not in listed.stdout
    assert "secret" not in json.dumps(mine[0]).replace("client_secret_basic", "")

    # the gateway (another ClientStore, with its own cache) accepts the new client
    token = token_for(http, cid, secret)
    assert http.get("/fhir/Patient", headers=bearer(token)).status_code == 200

    revoked = runner.invoke(cli, ["clients", "revoke", cid, "--database", db])
    assert revoked.exit_code == 0 and cid in revoked.output
    # the gateway's cached client expires within its ttl (2 s): then the token fails
    deadline = time.monotonic() + 3.0
    while http.get("/fhir/Patient", headers=bearer(token)).status_code != 401:
        assert time.monotonic() < deadline, "a revoked client's token still works after 3 s"
        time.sleep(0.1)
    assert request_token(http, cid, secret).status_code == 401

    again = runner.invoke(cli, ["clients", "revoke", cid, "--database", db])
    assert again.exit_code == 1 and "no active client" in again.output
    listed = runner.invoke(cli, ["clients", "list", "--database", db])
    assert cid not in listed.stdout
    everything = runner.invoke(cli, ["clients", "list", "--all", "--database", db])
    gone = [json.loads(line) for line in everything.stdout.splitlines()
            if json.loads(line)["client_id"] == cid]
    assert gone[0]["revoked"] is not None


def test_clients_cli_refuses_bad_input(app, tmp_path):
    from fhirgw.cli import app as cli

    db = str(app.state.router.repo.engine.url.render_as_string(hide_password=False))
    runner = CliRunner()
    for args in (["clients", "create", "x", "--scope", "user/*.read"],
                 ["clients", "create", "x", "--scope", "system/*.rs", "--no-secret"],
                 ["clients", "create", "x", "--scope", "fhirgw/admin", "--organization",
                  "Organization/p"]):
        r = runner.invoke(cli, [*args, "--database", db])
        assert r.exit_code == 2 and r.output.startswith("error: "), r.output
    # a JWKS-only client
    _key, jwk = signing_key("ES384")
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps({"keys": [jwk]}))
    r = runner.invoke(cli, ["clients", "create", "backend", "--scope", "system/*.rs",
                            "--jwks", str(keys), "--no-secret", "--database", db])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert "client_secret" not in out
    listed = runner.invoke(cli, ["clients", "list", "--database", db]).stdout
    row = [json.loads(line) for line in listed.splitlines()
           if json.loads(line)["client_id"] == out["client_id"]][0]
    assert row["auth"] == ["private_key_jwt"]


def test_clients_cli_leaves_the_environment_alone(app):
    from fhirgw.cli import app as cli

    db = str(app.state.router.repo.engine.url.render_as_string(hide_password=False))
    before = os.environ.get("FHIRGW_DATABASE_URL")
    CliRunner().invoke(cli, ["clients", "list", "--database", db])
    assert os.environ.get("FHIRGW_DATABASE_URL") == before


def test_clients_cli_scope_narrows_live_tokens(app, http):
    from fhirgw.cli import app as cli

    db = str(app.state.router.repo.engine.url.render_as_string(hide_password=False))
    runner = CliRunner()
    cid, secret = grant(app, "system/*.rs")
    token = token_for(http, cid, secret)
    assert http.get("/fhir/Patient", headers=bearer(token)).status_code == 200
    changed = runner.invoke(cli, ["clients", "scope", cid, "system/Task.rs",
                                  "--database", db])
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.stdout)["scope"] == "system/Task.rs"
    # the gateway's cached client expires within its ttl (2 s): then Patient is refused
    deadline = time.monotonic() + 3.0
    while http.get("/fhir/Patient", headers=bearer(token)).status_code != 403:
        assert time.monotonic() < deadline, "the old scopes still work after 3 s"
        time.sleep(0.1)
    assert http.get("/fhir/Task", headers=bearer(token)).status_code == 200
    bad = runner.invoke(cli, ["clients", "scope", cid, "patient/Patient.r", "--database", db])
    assert bad.exit_code == 2 and "system/" in bad.output
    gone = runner.invoke(cli, ["clients", "scope", "nobody", "system/*.rs", "--database", db])
    assert gone.exit_code == 2 and "no active client" in gone.output
