"""Profile enforcement on write, $validate, and definitions posted at run time."""
import copy
import json
import pathlib

import pytest
from fastapi.testclient import TestClient

from fhirgw.app import create_app
from fhirgw.config import Settings
from tests.auth import authorize

FJ = {"Content-Type": "application/fhir+json"}
ROOT = pathlib.Path(__file__).resolve().parents[2]
CLIENT = "http://fhirgw.dev/fhir/StructureDefinition/iop-client"


def example(name):
    return json.loads((ROOT / "profiles" / "examples" / name).read_text())


def test_profiled_write_is_enforced(client):
    good = example("Patient-iop-client.json")
    r = client.post("/fhir/Patient", json=good, headers=FJ)
    assert r.status_code == 201, r.text
    bad = copy.deepcopy(good)
    del bad["birthDate"]
    bad["telecom"] = [{"system": "fax", "value": "1"}]
    r = client.post("/fhir/Patient", json=bad, headers=FJ)
    assert r.status_code == 422
    oo = r.json()
    exprs = {e for i in oo["issue"] for e in i.get("expression", [])}
    assert "Patient.birthDate" in exprs
    assert any(i["code"] == "invariant" for i in oo["issue"])
    assert client.get("/fhir/Patient/_history").json()["total"] == 1


def test_profile_errors_in_a_transaction_name_the_entry(client):
    bad = example("Patient-iop-client.json")
    del bad["name"]
    b = {"resourceType": "Bundle", "type": "transaction",
         "entry": [{"resource": bad, "request": {"method": "POST", "url": "Patient"}}]}
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 422
    assert "Bundle.entry[0].resource.name" in r.json()["issue"][0]["expression"]


def test_unknown_profile_is_a_warning_not_an_error(client):
    p = {"resourceType": "Patient", "meta": {"profile": ["http://example.org/no-such-profile"]}}
    assert client.post("/fhir/Patient", json=p, headers=FJ).status_code == 201


def test_validate_operation(client):
    bad = example("Patient-iop-client.json")
    del bad["identifier"]
    r = client.post("/fhir/Patient/$validate", json=bad, headers=FJ)
    assert r.status_code == 200
    assert any("Patient.identifier" in i.get("expression", []) for i in r.json()["issue"])
    # the same against a profile named in Parameters, the resource without meta.profile
    plain = {"resourceType": "Patient", "name": [{"family": "X"}]}
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": plain}, {"name": "profile", "valueCanonical": CLIENT}]}
    r = client.post("/fhir/Patient/$validate", json=params, headers=FJ)
    assert r.status_code == 200
    sev = {i["severity"] for i in r.json()["issue"]}
    assert "error" in sev
    ok = client.post("/fhir/Patient/$validate", json=example("Patient-iop-client.json"), headers=FJ)
    assert ok.json()["issue"][0]["severity"] == "information"
    # structural errors come back as an outcome too, still 200
    r = client.post("/fhir/Patient/$validate", json={"resourceType": "Patient", "gender": 3},
                    headers=FJ)
    assert r.status_code == 200 and r.json()["issue"][0]["expression"] == ["Patient.gender"]
    assert client.get("/fhir/Patient/_history").json()["total"] == 0


def test_validate_operation_bad_requests(client):
    r = client.post("/fhir/Patient/$validate", json={"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "destroy"}]}, headers=FJ)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Parameters.parameter[0].valueCode"]
    r = client.post("/fhir/Patient/nobody/$validate", json={"resourceType": "Parameters",
                    "parameter": [{"name": "mode", "valueCode": "delete"}]}, headers=FJ)
    assert r.status_code == 404


PROFILE = {
    "resourceType": "StructureDefinition", "url": "http://example.org/fhir/StructureDefinition/gender-required",
    "name": "GenderRequired", "status": "active", "kind": "resource", "abstract": False,
    "type": "Patient", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
    "derivation": "constraint",
    "differential": {"element": [{"id": "Patient.gender", "path": "Patient.gender", "min": 1}]}}


def test_posted_profile_is_enforced_at_once_and_dropped_on_delete(client):
    sd = client.post("/fhir/StructureDefinition", json=PROFILE, headers=FJ)
    assert sd.status_code == 201, sd.text
    claim = {"resourceType": "Patient", "meta": {"profile": [PROFILE["url"]]}}
    r = client.post("/fhir/Patient", json=claim, headers=FJ)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Patient.gender"]
    assert client.post("/fhir/Patient", json=dict(claim, gender="female"), headers=FJ).status_code == 201
    client.delete(f"/fhir/StructureDefinition/{sd.json()['id']}")
    assert client.post("/fhir/Patient", json=claim, headers=FJ).status_code == 201


def test_required_profiles_per_type(db_url):
    app = create_app(Settings(database_url=db_url, required_profiles=f"Patient={CLIENT}"))
    with TestClient(app) as c:
        authorize(c, app)
        r = c.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "A"}]},
                   headers=FJ)
        assert r.status_code == 422
        assert c.post("/fhir/Patient", json=example("Patient-iop-client.json"),
                      headers=FJ).status_code == 201
        # other types are not affected
        assert c.post("/fhir/Organization", json={"resourceType": "Organization", "name": "x"},
                      headers=FJ).status_code == 201
    app.state.router.repo.engine.dispose()


@pytest.mark.parametrize("body, where, what", [
    ({"resourceType": "Patient", "active": "yes"}, "Patient.active", "boolean"),
    ({"resourceType": "Patient", "active": 1}, "Patient.active", "boolean"),
    ({"resourceType": "Patient", "multipleBirthInteger": "3"}, "Patient.multipleBirthInteger",
     "integer"),
    ({"resourceType": "Patient", "multipleBirthInteger": 3.0}, "Patient.multipleBirthInteger",
     "integer"),
    ({"resourceType": "Patient", "deceasedDateTime": 1700000000}, "Patient.deceasedDateTime",
     "string"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
      "valueQuantity": {"value": "72.50", "unit": "kg"}}, "Observation.valueQuantity.value",
     "number"),
    ({"resourceType": "Patient", "maritalStatus": {"coding": [{"code": "M",
                                                               "userSelected": "true"}]}},
     "Patient.maritalStatus.coding[0].userSelected", "boolean"),
    ({"resourceType": "Patient", "contained": [{"resourceType": "Practitioner", "active": 0}]},
     "Patient.contained[0].active", "boolean"),
])
def test_primitives_must_have_their_json_type(client, body, where, what):
    """fhir.resources converts "yes", 1, "3" and "72.50" into booleans and numbers; FHIR
    JSON does not, and the gateway stores what it receives: refused, nothing stored."""
    rtype = body["resourceType"]
    r = client.post(f"/fhir/{rtype}", json=body)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == [where] and f"a JSON {what}" in issue["diagnostics"]
    r = client.put(f"/fhir/{rtype}/typed", json={**body, "id": "typed"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == [where]
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "active": True},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": body, "request": {"method": "POST", "url": rtype}}]})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == [where.replace(rtype, "Bundle.entry[1].resource", 1)]
    assert client.get(f"/fhir/{rtype}", params={"_summary": "count"}).json()["total"] == 0
    assert client.get("/fhir/Patient", params={"_summary": "count"}).json()["total"] == 0


def test_numbers_and_booleans_as_json_types_are_fine(client):
    body = {"resourceType": "Patient", "active": False, "multipleBirthInteger": 2,
            "extension": [{"url": "http://example.org/x", "valueDecimal": 1.50},
                          {"url": "http://example.org/y", "valueDecimal": 3}]}
    r = client.post("/fhir/Patient", content=json.dumps(body).replace("1.5", "1.50"),
                    headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text
    assert b'"valueDecimal":1.50' in client.get(f"/fhir/Patient/{r.json()['id']}").content
