"""Auth flows against respx-mocked token endpoints (the gateway has no auth yet)."""
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
    SmartBackendServices,
    Unauthorized,
)

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
