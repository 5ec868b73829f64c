"""$discharge and $medication-handoff: thin operation calls (respx; the server lacks them yet)."""
from __future__ import annotations

import json

import httpx
import pytest
import respx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.episodeofcare import EpisodeOfCare
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient

from fhirgw.client import AsyncClient, Client, DecodeError, NotFound

BASE = "http://fhir.test/fhir"
DOCUMENT = {"resourceType": "Bundle", "type": "document", "timestamp": "2026-03-01T10:00:00Z",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
            "entry": [{"fullUrl": "urn:uuid:2", "resource": {
                "resourceType": "Composition", "status": "final", "date": "2026-03-01",
                "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]},
                "author": [{"reference": "Practitioner/1"}], "title": "Discharge summary"}}]}
MESSAGE = {"resourceType": "Bundle", "type": "message", "timestamp": "2026-03-01T10:00:00Z",
           "entry": [{"fullUrl": "urn:uuid:3", "resource": {
               "resourceType": "MessageHeader", "eventUri": "urn:iop:medication-handoff",
               "source": {"endpoint": "urn:iop"}}}]}


@respx.mock
def test_discharge_posts_parameters_and_returns_the_document():
    route = respx.post(f"{BASE}/EpisodeOfCare/eoc-1/$discharge").mock(
        return_value=httpx.Response(200, json=DOCUMENT))
    with Client(BASE) as c:
        doc = c.discharge(EpisodeOfCare(id="eoc-1", status="active", patient={"reference": "Patient/1"}),
                          follow_up="biweekly", count=6, date="2026-03-01")
    assert isinstance(doc, Bundle) and doc.type == "document"
    assert doc.entry[0].resource.type.coding[0].code == "18842-5"
    body = json.loads(route.calls[0].request.content)
    assert body == {"resourceType": "Parameters", "parameter": [
        {"name": "date", "valueDate": "2026-03-01"},
        {"name": "followUpCadence", "valueCode": "biweekly"},
        {"name": "followUpCount", "valueInteger": 6}]}
    assert route.calls[0].request.headers["Content-Type"] == "application/fhir+json"


@respx.mock
def test_medication_handoff_sends_the_recipient_reference():
    route = respx.post(f"{BASE}/Patient/p1/$medication-handoff").mock(
        return_value=httpx.Response(200, json=MESSAGE))
    with Client(BASE) as c:
        msg = c.medication_handoff(Patient(id="p1"), recipient=Organization(id="pharm-1"),
                                   note="Buprenorphine 8 mg daily; last fill 2026-02-27")
    assert msg.type == "message"
    body = json.loads(route.calls[0].request.content)
    assert body["parameter"] == [
        {"name": "recipient", "valueReference": {"reference": "Organization/pharm-1"}},
        {"name": "note", "valueString": "Buprenorphine 8 mg daily; last fill 2026-02-27"}]
    assert route.call_count == 1


@respx.mock
def test_operation_errors_and_wrong_answers():
    respx.post(f"{BASE}/EpisodeOfCare/x/$discharge").mock(return_value=httpx.Response(
        404, json={"resourceType": "OperationOutcome",
                   "issue": [{"severity": "error", "code": "not-found", "diagnostics": "no episode"}]}))
    respx.post(f"{BASE}/EpisodeOfCare/y/$discharge").mock(return_value=httpx.Response(
        200, json={"resourceType": "Patient", "id": "1"}))
    with Client(BASE) as c:
        with pytest.raises(NotFound, match="no episode"):
            c.discharge("x")
        with pytest.raises(DecodeError, match="not a Bundle"):
            c.discharge("EpisodeOfCare/y")


@pytest.mark.anyio
@respx.mock
async def test_async_operations():
    respx.post(f"{BASE}/EpisodeOfCare/e/$discharge").mock(return_value=httpx.Response(200, json=DOCUMENT))
    respx.post(f"{BASE}/Patient/p/$medication-handoff").mock(return_value=httpx.Response(200, json=MESSAGE))
    async with AsyncClient(BASE) as c:
        assert (await c.discharge("e", follow_up="weekly", count=4)).type == "document"
        assert (await c.medication_handoff("p", recipient="Organization/o")).type == "message"
