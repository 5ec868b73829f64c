"""Error answers become one exception hierarchy carrying the server's OperationOutcome."""
from __future__ import annotations

import httpx
import pytest
from fhir.resources.R4B.patient import Patient

import fhirgw.client as sdk
from fhirgw.client import BadRequest, Client, FhirClientError, NotFound, ResponseError, ValidationError


def test_not_found_carries_the_outcome(client):
    with pytest.raises(NotFound) as err:
        client.read(Patient, "no-such-id")
    e = err.value
    assert isinstance(e, ResponseError) and isinstance(e, FhirClientError)
    assert e.status == 404 and e.method == "GET" and e.url == "Patient/no-such-id"
    assert e.issues[0].code == "not-found"
    assert "Patient/no-such-id" in str(e) and str(e).startswith("404 Not Found: ")


def test_invalid_resource_is_a_validation_error_with_expressions(client):
    with pytest.raises(ValidationError) as err:
        client.request("POST", "Patient", json={"resourceType": "Patient", "birthDate": "02/04/1990"})
    assert err.value.status == 400
    assert any("birthDate" in x for x in err.value.expressions)
    assert isinstance(err.value, BadRequest)


def test_unknown_type_and_bad_search(client):
    with pytest.raises(NotFound):
        client.request("GET", "NoSuchType/1")
    with pytest.raises(BadRequest) as err:
        client.search(Patient).params("birthdate=notadate").all()
    assert err.value.status == 400 and err.value.diagnostics


def test_failed_json_patch_test_is_unprocessable(client):
    p = client.create(Patient(active=True))
    with pytest.raises(sdk.UnprocessableEntity) as err:
        client.patch(p, [{"op": "test", "path": "/active", "value": False}])
    assert err.value.status == 422 and isinstance(err.value, ValidationError)


@pytest.mark.parametrize("status,cls", [
    (401, sdk.Unauthorized), (403, sdk.Forbidden), (405, sdk.MethodNotAllowed),
    (406, sdk.UnsupportedFormat), (409, sdk.Conflict), (413, sdk.PayloadTooLarge),
    (415, sdk.UnsupportedFormat), (429, sdk.TooManyRequests), (500, sdk.ServerError),
    (503, sdk.ServerError), (418, sdk.ResponseError),
])
def test_every_status_maps_to_its_class(status, cls):
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "security", "diagnostics": "nope"}]}
    transport = httpx.MockTransport(lambda r: httpx.Response(status, json=outcome))
    with Client("http://fhir.test/fhir", transport=transport, retry=None) as c:
        with pytest.raises(cls) as err:
            c.read(Patient, "1")
    assert type(err.value) is cls and err.value.status == status
    assert err.value.diagnostics == ["nope"]


def test_an_error_without_outcome_still_explains_itself():
    transport = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    with Client("http://fhir.test/fhir", transport=transport, retry=None) as c:
        with pytest.raises(sdk.ServerError) as err:
            c.read(Patient, "1")
    assert err.value.outcome is None and err.value.issues == []
    assert "bad gateway" in str(err.value)


def test_non_fhir_success_is_a_decode_error():
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"hello": "world"}))
    with Client("http://fhir.test/fhir", transport=transport) as c:
        with pytest.raises(sdk.DecodeError):
            c.read(Patient, "1")
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"resourceType": "Observation"}))
    with Client("http://fhir.test/fhir", transport=transport) as c:
        with pytest.raises(sdk.DecodeError, match="expected a Patient"):
            c.read(Patient, "1")


def test_connection_refused_is_a_transport_error():
    with Client("http://127.0.0.1:9/fhir", retry=None, timeout=2) as c:
        with pytest.raises(sdk.TransportError) as err:
            c.read(Patient, "1")
    assert "GET Patient/1" in str(err.value)
