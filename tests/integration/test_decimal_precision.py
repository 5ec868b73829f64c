"""FHIR decimals keep their exact text over real HTTP (create -> read, and in search Bundles).

FHIR decimal is arbitrary-precision text (up to 18 significant digits); "72.50" and "72.5"
are different values to a receiver that keeps precision. Every value below is sent as raw
bytes and must come back as the same bytes.
"""
from __future__ import annotations

import httpx
import pytest

FJ = {"Content-Type": "application/fhir+json"}

DECIMALS = [
    "72.50",                 # trailing zero
    "0.000",
    "1.10",
    "-0.0",
    "1E3", "1.5e-7",         # exponents
    "0.1", "3", "100",
    "123456789012345.67",    # 17 digits, float-exact
    "0.12345678901234567",
    "12345678.123456789",    # 17 significant digits split by the point: a float changes it
    "100.000000000000001",   # 18 significant digits: a float makes it 100.0
    "3.141592653589793238",  # 19 digits
]


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(timeout=30, headers=live_server.headers) as c:
        yield c


@pytest.mark.parametrize("text", DECIMALS)
def test_decimal_text_survives_create_and_read(http, live_server, text):
    raw = ('{"resourceType":"Observation","status":"final","code":{"coding":[{"system":'
           '"http://loinc.org","code":"29463-7"}]},"valueQuantity":{"value":' + text
           + ',"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}').encode()
    r = http.post(f"{live_server.base}/Observation", content=raw, headers=FJ)
    assert r.status_code == 201, r.text
    assert f'"value":{text},'.encode() in r.content, r.content
    got = http.get(r.headers["location"].rsplit("/_history", 1)[0])
    assert got.status_code == 200
    assert f'"value":{text},'.encode() in got.content, got.content
