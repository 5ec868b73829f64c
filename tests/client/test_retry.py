"""Retries with backoff on 429/5xx honouring Retry-After, and timeouts (respx, no server)."""
from __future__ import annotations

import httpx
import pytest
import respx
from fhir.resources.R4B.patient import Patient

from fhirgw.client import AsyncClient, Client, Retry, ServerError, Timeout, TooManyRequests

BASE = "http://fhir.test/fhir"
PATIENT = {"resourceType": "Patient", "id": "1", "meta": {"versionId": "1"}}


def _client(**kw):
    c = Client(BASE, retry=kw.pop("retry", Retry(total=3, backoff_factor=0.5, jitter=0)), **kw)
    c.waits = []
    c._sleep = c.waits.append
    return c


@respx.mock
def test_503_then_success_with_retry_after():
    route = respx.get(f"{BASE}/Patient/1").mock(side_effect=[
        httpx.Response(503, headers={"Retry-After": "2"}),
        httpx.Response(502),
        httpx.Response(200, json=PATIENT)])
    c = _client()
    assert c.read(Patient, "1").id == "1"
    assert route.call_count == 3
    assert c.waits == [2.0, 1.0]        # Retry-After wins, then backoff 0.5 * 2**1


@respx.mock
def test_gives_up_after_total_retries():
    route = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(500))
    c = _client()
    with pytest.raises(ServerError):
        c.read(Patient, "1")
    assert route.call_count == 4 and c.waits == [0.5, 1.0, 2.0]


@respx.mock
def test_retry_after_is_capped_and_dates_are_understood():
    respx.get(f"{BASE}/Patient/1").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        httpx.Response(200, json=PATIENT)])
    c = _client(retry=Retry(total=2, backoff_max=10, jitter=0))
    c.read(Patient, "1")
    assert c.waits == [10, 0.0]


@respx.mock
def test_a_create_is_not_resent_after_a_5xx_but_is_after_429():
    route = respx.post(f"{BASE}/Patient").mock(return_value=httpx.Response(500))
    c = _client()
    with pytest.raises(ServerError):
        c.create(Patient())
    assert route.call_count == 1 and c.waits == []

    route.mock(side_effect=[httpx.Response(429), httpx.Response(201, json=PATIENT)])
    assert c.create(Patient()).id == "1"
    assert c.waits == [0.5]


@respx.mock
def test_a_conditional_create_is_safe_to_resend():
    route = respx.post(f"{BASE}/Patient").mock(side_effect=[
        httpx.Response(503), httpx.Response(200, json=PATIENT)])
    c = _client()
    c.create(Patient(), if_none_exist={"identifier": "urn:x|1"})
    assert route.call_count == 2
    assert route.calls[0].request.headers["If-None-Exist"] == "identifier=urn%3Ax%7C1"


@respx.mock
def test_timeouts_and_connection_errors():
    route = respx.get(f"{BASE}/Patient/1").mock(side_effect=[
        httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
        httpx.Response(200, json=PATIENT)])
    c = _client()
    assert c.read(Patient, "1").id == "1" and route.call_count == 3

    route.mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(Timeout, match="ReadTimeout"):
        c.read(Patient, "1")
    # a read timeout after a POST may have created it: not resent
    post = respx.post(f"{BASE}/Patient").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(Timeout):
        c.create(Patient())
    assert post.call_count == 1
    # ... but a refused connection never reached the server: resent
    post.mock(side_effect=[httpx.ConnectError("refused"), httpx.Response(201, json=PATIENT)])
    assert c.create(Patient()).id == "1"


@respx.mock
def test_no_retry_when_disabled():
    route = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(429))
    c = _client(retry=None)
    with pytest.raises(TooManyRequests):
        c.read(Patient, "1")
    assert route.call_count == 1


def test_a_real_read_timeout_is_reported():
    """A server that accepts the connection and never answers."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/fhir"
        with Client(url, timeout=0.2, retry=None) as c:
            with pytest.raises(Timeout, match="GET Patient/x: ReadTimeout"):
                c.read(Patient, "x")
    finally:
        silent.close()


@pytest.mark.anyio
@respx.mock
async def test_async_retries_the_same_way():
    route = respx.get(f"{BASE}/Patient/1").mock(side_effect=[
        httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(200, json=PATIENT)])
    waits = []

    async def fake_sleep(s):
        waits.append(s)

    async with AsyncClient(BASE, retry=Retry(jitter=0)) as c:
        c._sleep = fake_sleep
        assert (await c.read(Patient, "1")).id == "1"
    assert route.call_count == 2 and waits == [1.0]


@respx.mock
def test_connections_are_reused():
    """One httpx client (one pool) per Client: default headers and keep-alive."""
    route = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(200, json=PATIENT))
    with Client(BASE, headers={"X-Request-Id": "abc"}) as c:
        http = c._http
        c.read(Patient, "1")
        c.read(Patient, "1")
        assert c._http is http
    request = route.calls[0].request
    assert request.headers["X-Request-Id"] == "abc"
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["User-Agent"].startswith("fhirgw-client/")
    assert http.is_closed
