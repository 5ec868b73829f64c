"""Auth flows: against respx-mocked token endpoints (every branch, a fake clock), then for
real against the live gateway's own token endpoint (client secret basic and post, SMART
private_key_jwt with RS384 and ES384, narrowed scopes, a revoked client)."""
from __future__ import annotations

import base64
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir.resources.R4B.patient import Patient

from fhirgw.client import (
    AsyncClient,
    AuthError,
    BearerToken,
    Client,
    ClientCredentials,
    Forbidden,
    SmartBackendServices,
    Unauthorized,
)
from tests.auth import grant, grant_jwks, signing_key, token_url

BASE = "http://fhir.test/fhir"
TOKEN_URL = "http://auth.test/token"
PATIENT = {"resourceType": "Patient", "id": "1"}


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def _form(request):
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


@respx.mock
def test_a_token_string_is_a_bearer_token():
    route = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(200, json=PATIENT))
    with Client(BASE, auth="s3cret") as c:
        c.read(Patient, "1")
    with Client(BASE, auth=BearerToken("other")) as c:
        c.read(Patient, "1")
    assert [r.request.headers["Authorization"] for r in route.calls] == ["Bearer s3cret", "Bearer other"]
    with pytest.raises(TypeError):
        Client(BASE, auth=42)  # type: ignore[arg-type]


@respx.mock
def test_client_credentials_fetch_reuse_and_refresh():
    tokens = iter(["tok-1", "tok-2", "tok-3"])
    token = respx.post(TOKEN_URL).mock(side_effect=lambda r: httpx.Response(
        200, json={"access_token": next(tokens), "token_type": "bearer", "expires_in": 300}))
    api = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(200, json=PATIENT))
    clock = Clock()
    auth = ClientCredentials(TOKEN_URL, "iop-app", "p@ss:word", scope="system/Patient.read",
                             clock=clock)
    with Client(BASE, auth=auth) as c:
        c.read(Patient, "1")
        c.read(Patient, "1")
        assert token.call_count == 1                     # cached
        clock.now += 250                                 # within the 60 s leeway: refresh
        c.read(Patient, "1")
    assert token.call_count == 2
    assert [r.request.headers["Authorization"] for r in api.calls] == \
        ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    sent = token.calls[0].request
    assert _form(sent) == {"grant_type": "client_credentials", "scope": "system/Patient.read"}
    basic = base64.b64decode(sent.headers["Authorization"].split()[1]).decode()
    assert basic == "iop-app:p%40ss%3Aword"


@respx.mock
def test_a_401_gets_one_new_token_and_one_retry():
    tokens = iter(["old", "new"])
    respx.post(TOKEN_URL).mock(side_effect=lambda r: httpx.Response(
        200, json={"access_token": next(tokens), "expires_in": 3600}))
    api = respx.get(f"{BASE}/Patient/1").mock(side_effect=[
        httpx.Response(200, json=PATIENT), httpx.Response(401), httpx.Response(200, json=PATIENT)])
    auth = ClientCredentials(TOKEN_URL, "id", "secret", auth_method="post")
    with Client(BASE, auth=auth) as c:
        c.read(Patient, "1")
        c.read(Patient, "1")                             # 401 -> new token -> 200
    assert [r.request.headers["Authorization"] for r in api.calls] == \
        ["Bearer old", "Bearer old", "Bearer new"]


@respx.mock
def test_a_refused_token_request_raises_auth_error():
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(
        401, json={"error": "invalid_client", "error_description": "unknown client"}))
    with Client(BASE, auth=ClientCredentials(TOKEN_URL, "id", "bad")) as c:
        with pytest.raises(AuthError, match="invalid_client: unknown client") as err:
            c.read(Patient, "1")
    assert err.value.status == 401 and err.value.error == "invalid_client"


@respx.mock
def test_a_401_with_a_fresh_token_is_unauthorized():
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t"}))
    respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(401, json={
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login", "diagnostics": "token revoked"}]}))
    with Client(BASE, auth=ClientCredentials(TOKEN_URL, "id", "s")) as c:
        with pytest.raises(Unauthorized, match="token revoked"):
            c.read(Patient, "1")


def _rsa():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, key.public_key()


def _ec():
    key = ec.generate_private_key(ec.SECP384R1())
    return key, key.public_key()


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
@respx.mock
def test_smart_backend_services_signs_a_client_assertion(algorithm):
    private, public = _rsa() if algorithm == "RS384" else _ec()
    token = respx.post(TOKEN_URL).mock(return_value=httpx.Response(
        200, json={"access_token": "smart-token", "expires_in": 300, "scope": "system/*.read"}))
    api = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(200, json=PATIENT))
    clock = Clock()
    auth = SmartBackendServices(TOKEN_URL, "iop-backend", private, key_id="key-1",
                                algorithm=algorithm, scope="system/*.read", clock=clock)
    with Client(BASE, auth=auth) as c:
        c.read(Patient, "1")
        clock.now += 600                                  # expired: a new assertion
        c.read(Patient, "1")
    assert api.calls[0].request.headers["Authorization"] == "Bearer smart-token"
    forms = [_form(call.request) for call in token.calls]
    assert len(forms) == 2
    form = forms[0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert form["scope"] == "system/*.read"
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header["alg"] == algorithm and header["kid"] == "key-1" and header["typ"] == "JWT"
    claims = jwt.decode(form["client_assertion"], public, algorithms=[algorithm],
                        audience=TOKEN_URL, options={"verify_exp": False})
    assert claims["iss"] == claims["sub"] == "iop-backend"
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["jti"] != jwt.decode(forms[1]["client_assertion"], public,
                                       algorithms=[algorithm], audience=TOKEN_URL,
                                       options={"verify_exp": False})["jti"]


def test_smart_refuses_other_algorithms():
    with pytest.raises(ValueError):
        SmartBackendServices(TOKEN_URL, "id", b"", algorithm="HS256")


@pytest.mark.anyio
@respx.mock
async def test_async_client_uses_the_same_auth_flow():
    token = respx.post(TOKEN_URL).mock(return_value=httpx.Response(
        200, json={"access_token": "async-tok", "expires_in": 300}))
    api = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(200, json=PATIENT))
    async with AsyncClient(BASE, auth=ClientCredentials(TOKEN_URL, "id", "s")) as c:
        await c.read(Patient, "1")
        await c.read(Patient, "1")
    assert token.call_count == 1
    assert api.calls[1].request.headers["Authorization"] == "Bearer async-tok"


# ---------------------------------------------------------------- the live gateway

def _patient(family: str) -> Patient:
    return Patient(name=[{"family": family}])


@pytest.mark.parametrize("method", ["basic", "post"])
def test_live_client_credentials(gateway, gateway_app, method):
    cid, secret = grant(gateway_app, "system/*.cruds")
    auth = ClientCredentials(token_url(gateway), cid, secret, auth_method=method)
    with Client(gateway, auth=auth) as c:
        created = c.create(_patient(f"Live-{method}"))
        assert c.read(Patient, created.id).name[0].family == f"Live-{method}"
    assert auth.access_token and auth.expires_at


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_live_smart_backend_services(gateway, gateway_app, algorithm):
    key, jwk = signing_key(algorithm)
    cid = grant_jwks(gateway_app, jwk, scope="system/Patient.cruds")
    smart_url = httpx.get(gateway.removesuffix("/fhir") + "/.well-known/smart-configuration"
                          ).json()["token_endpoint"]
    auth = SmartBackendServices(smart_url, cid, key, key_id=jwk["kid"], algorithm=algorithm,
                                scope="system/Patient.rs")
    with Client(gateway, auth=auth) as c:
        found = c.search(Patient).where(_count=1).all()
        assert isinstance(found, list)
        with pytest.raises(Forbidden):          # the token holds only the narrowed scope
            c.create(_patient("Smart"))


def test_live_narrowed_scope_and_refused_scope(gateway, gateway_app):
    cid, secret = grant(gateway_app, "system/*.cruds")
    with Client(gateway, auth=ClientCredentials(token_url(gateway), cid, secret,
                                                scope="system/Patient.rs")) as c:
        c.search(Patient).where(_count=1).all()
        with pytest.raises(Forbidden):
            c.create(_patient("Narrow"))
    with Client(gateway, auth=ClientCredentials(token_url(gateway), cid, secret,
                                                scope="fhirgw/admin")) as c:
        with pytest.raises(AuthError) as err:
            c.read(Patient, "x")
    assert err.value.status == 400 and err.value.error == "invalid_scope"


def test_live_revoked_client(gateway, gateway_app):
    cid, secret = grant(gateway_app, "system/*.cruds")
    auth = ClientCredentials(token_url(gateway), cid, secret)
    with Client(gateway, auth=auth) as c:
        p = c.create(_patient("Revoked"))
        gateway_app.state.auth.clients.revoke(cid)
        # the token is refused (same process: at once), a new one too: AuthError
        with pytest.raises(AuthError) as err:
            c.read(Patient, p.id)
    assert err.value.status == 401 and err.value.error == "invalid_client"
    with Client(gateway, auth=ClientCredentials(token_url(gateway), "no-such", "x")) as c:
        with pytest.raises(AuthError, match="invalid_client"):
            c.read(Patient, p.id)


def test_live_no_token_is_unauthorized(gateway):
    with Client(gateway) as c:
        assert c.capabilities().fhirVersion == "4.0.1"   # metadata is open
        with pytest.raises(Unauthorized):
            c.read(Patient, "x")
