"""Random JSON in FHIR-shaped bodies: the gateway answers 201/200 or a 4xx outcome, never a
500, and a refused body stores nothing."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FJ = {"Content-Type": "application/fhir+json"}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
FIELDS = ["id", "meta", "text", "contained", "extension", "identifier", "active", "name",
          "telecom", "gender", "birthDate", "address", "contact", "link", "managingOrganization",
          "generalPractitioner", "deceasedBoolean", "multipleBirthInteger", "nonsense"]
bodies = st.fixed_dictionaries({}, optional={f: values for f in FIELDS}).map(
    lambda d: {"resourceType": "Patient", **d})


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_random_patient_bodies(client, body):
    before = client.get("/fhir/Patient/_history?_count=0").json()["total"]
    r = client.post("/fhir/Patient", content=json.dumps(body), headers=FJ)
    assert r.status_code in (201, 400, 422), r.text
    after = client.get("/fhir/Patient/_history?_count=0").json()["total"]
    if r.status_code == 201:
        assert after == before + 1
    else:
        assert r.json()["resourceType"] == "OperationOutcome"
        assert after == before


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["name", "birthdate", "identifier", "gender", "_id", "_lastUpdated",
                             "general-practitioner", "address-postalcode", "_has:Observation:patient:code",
                             "_sort", "_count", "_include", "name:exact", "birthdate:missing"]),
       value=st.text(max_size=20))
def test_random_search_values(client, name, value):
    r = client.get("/fhir/Patient", params={name: value})
    assert r.status_code in (200, 400), r.text
    assert r.json()["resourceType"] in ("Bundle", "OperationOutcome")
