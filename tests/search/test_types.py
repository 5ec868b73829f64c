"""Search parameter types, modifiers and prefixes, from the R4 search page's examples."""
import pytest

from fhirgw.model.errors import BadRequest


@pytest.fixture
def patients(store):
    store.put({"resourceType": "Patient", "id": "eve", "active": True, "gender": "female",
               "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
               "birthDate": "1974-12-25",
               "identifier": [{"system": "http://acme.org/patient", "value": "2345",
                               "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                    "code": "MR"}], "text": "Medical Record"}}],
               "address": [{"city": "Zürich", "line": ["534 Erewhon St"]}],
               "telecom": [{"system": "phone", "value": "(03) 5555 6473"}],
               "managingOrganization": {"reference": "Organization/org1"},
               "generalPractitioner": [{"reference": "http://fhir.test/r4/Practitioner/pr1"}],
               "meta": {"tag": [{"system": "http://acme.org/tags", "code": "vip"}],
                        "profile": ["http://acme.org/fhir/StructureDefinition/pat|1.0"],
                        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                      "code": "R"}],
                        "source": "http://acme.org/ehr"}})
    store.put({"resourceType": "Patient", "id": "eva", "gender": "female", "active": False,
               "name": [{"family": "Évans", "given": ["Eva"]}], "birthDate": "1974-12",
               "managingOrganization": {"reference": "http://other.org/fhir/Organization/org1"}})
    store.put({"resourceType": "Patient", "id": "bob", "gender": "male",
               "name": [{"family": "Marley", "given": ["Bob"], "text": "Bob Marley"}],
               "birthDate": "1945-02-06", "deceasedDateTime": "1981-05-11"})
    return store


# ---------------------------------------------------------------- string

def test_string_prefix_case_and_accent_insensitive(patients):
    assert patients.idset("Patient", "name=chal") == {"eve"}
    assert patients.idset("Patient", "name=EVANS") == {"eva"}
    assert patients.idset("Patient", "family=evans") == {"eva"}
    assert patients.idset("Patient", "name=ans") == set()       # start of string only
    assert patients.idset("Patient", "address-city=zurich") == {"eve"}
    assert patients.idset("Patient", "address=erewhon") == set()
    assert patients.idset("Patient", "address=534") == {"eve"}


def test_string_exact_and_contains(patients):
    assert patients.idset("Patient", "family:exact=Évans") == {"eva"}
    assert patients.idset("Patient", "family:exact=evans") == set()
    assert patients.idset("Patient", "name:contains=ARL") == {"bob"}
    assert patients.idset("Patient", "address:contains=erewhon") == {"eve"}
    assert patients.idset("Patient", "name:contains=%") == set()   # LIKE wildcards escaped


def test_string_or_and(patients):
    assert patients.idset("Patient", "name=chal,marl") == {"eve", "bob"}
    assert patients.idset("Patient", "given=peter&given=james") == {"eve"}
    assert patients.idset("Patient", "given=peter&given=bob") == set()


def test_missing(patients):
    assert patients.idset("Patient", "death-date:missing=false") == {"bob"}
    assert patients.idset("Patient", "identifier:missing=true") == {"eva", "bob"}


# ---------------------------------------------------------------- token

def test_token_forms(patients):
    assert patients.idset("Patient", "identifier=2345") == {"eve"}
    assert patients.idset("Patient", "identifier=http://acme.org/patient|2345") == {"eve"}
    assert patients.idset("Patient", "identifier=http://other|2345") == set()
    assert patients.idset("Patient", "identifier=|2345") == set()
    assert patients.idset("Patient", "identifier=http://acme.org/patient|") == {"eve"}
    assert patients.idset("Patient", "gender=male,female") == {"eve", "eva", "bob"}
    assert patients.idset("Patient", "active=true") == {"eve"}
    assert patients.idset("Patient", "phone=(03) 5555 6473") == {"eve"}


def test_token_not_includes_missing(patients):
    assert patients.idset("Patient", "active:not=true") == {"eva", "bob"}
    assert patients.idset("Patient", "gender:not=female") == {"bob"}


def test_token_text_and_of_type(patients):
    assert patients.idset("Patient", "identifier:text=medical") == {"eve"}
    assert patients.idset("Patient",
                          "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|2345") == {"eve"}
    assert patients.idset("Patient",
                          "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|9") == set()


def test_token_coding_display_text(store):
    store.put({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6",
                                    "display": "Systolic blood pressure"}], "text": "BP sys"}})
    assert store.idset("Observation", "code=http://loinc.org|8480-6") == {"o1"}
    assert store.idset("Observation", "code:text=systolic") == {"o1"}
    assert store.idset("Observation", "code:text=bp") == {"o1"}
    assert store.idset("Observation", "code:text=diastolic") == set()


def test_a_text_equal_to_a_display_is_one_row(store, engine):
    """A CodeableConcept whose text is what one of its codings displays (the usual case)
    keeps one row: the coding's, which ``:text`` finds it through."""
    from fhirgw.store.tables import param_key

    store.put({"resourceType": "Condition", "id": "c1",
               "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                    "code": "F33.1", "display": "Major depressive disorder, "
                                    "recurrent, moderate"}],
                        "text": "Major  depressive disorder, recurrent, MODERATE"}})
    store.put({"resourceType": "Condition", "id": "c2",
               "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                    "code": "F41.1"}], "text": "Generalized anxiety disorder"}})
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT code, text FROM sp_token WHERE pid = ?"
            if engine.dialect.name == "sqlite" else
            "SELECT code, text FROM sp_token WHERE pid = %s",
            (param_key("Condition", "code"),)).all()
    assert sorted((tuple(r) for r in rows), key=lambda r: (r[0] is None, r)) == [
        ("F33.1", "major depressive disorder, recurrent, moderate"),
        ("F41.1", None), (None, "generalized anxiety disorder")]
    assert store.idset("Condition", "code:text=major depressive") == {"c1"}
    assert store.idset("Condition", "code:text=generalized") == {"c2"}
    assert store.idset("Condition", "code=F33.1") == {"c1"}


def test_meta_params(patients):
    assert patients.idset("Patient", "_tag=http://acme.org/tags|vip") == {"eve"}
    assert patients.idset("Patient", "_security=R") == {"eve"}
    assert patients.idset("Patient", "_profile=http://acme.org/fhir/StructureDefinition/pat") == {"eve"}
    assert patients.idset("Patient", "_source=http://acme.org/ehr") == {"eve"}
    assert patients.idset("Patient", "_id=eve,bob") == {"eve", "bob"}


# ---------------------------------------------------------------- date

@pytest.mark.parametrize("qs,expected", [
    ("birthdate=1974", {"eve", "eva"}),
    ("birthdate=1974-12", {"eve", "eva"}),
    ("birthdate=1974-12-25", {"eve"}),          # eva's 1974-12 is wider than the day
    ("birthdate=eq1974-12-25", {"eve"}),
    ("birthdate=ne1974-12-25", {"eva", "bob"}),
    ("birthdate=gt1974-12-24", {"eve", "eva"}),  # eva's month reaches past the 24th
    ("birthdate=gt1974-12-25", {"eva"}),
    ("birthdate=lt1974-12-25", {"eva", "bob"}),
    ("birthdate=ge1974-12-25", {"eve", "eva"}),
    ("birthdate=le1945-02-06", {"bob"}),
    ("birthdate=sa1974-11-30", {"eve", "eva"}),
    ("birthdate=eb1974-12-01", {"bob"}),
    ("birthdate=lt1900", set()),
    ("birthdate=ge1974-12-01T00:00:00Z", {"eve", "eva"}),
    ("birthdate=1974-12-25T10:00", set()),       # the day is wider than the minute
    ("birthdate=gt1974&birthdate=lt1975-06", set()),
    ("birthdate=ge1974&birthdate=lt1975-06", {"eve", "eva"}),
])
def test_date_prefixes(patients, qs, expected):
    assert patients.idset("Patient", qs) == expected


def test_date_period_and_timezones(store):
    store.put({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
               "period": {"start": "2026-01-05T10:00:00+01:00", "end": "2026-01-05T11:00:00+01:00"}})
    store.put({"resourceType": "Encounter", "id": "e2", "status": "in-progress", "class": {"code": "AMB"},
               "period": {"start": "2026-01-06"}})
    assert store.idset("Encounter", "date=2026-01-05") == {"e1"}
    assert store.idset("Encounter", "date=2026-01-05T09:30:00Z") == set()
    assert store.idset("Encounter", "date=ge2026-01-05T09:30:00Z") == {"e1", "e2"}
    assert store.idset("Encounter", "date=lt2026-01-05T09:30:00Z") == {"e1"}   # starts 09:00Z
    assert store.idset("Encounter", "date=gt2030") == {"e2"}                   # open end
    assert store.idset("Encounter", "date=2026-01-05T10:00:00%2B01:00") == set()
    assert "e1" in store.idset("Encounter", "date=ap2026-01-05")   # width depends on today


def test_bad_date_is_400(patients):
    with pytest.raises(BadRequest):
        patients.ids("Patient", "birthdate=1974-13")
    with pytest.raises(BadRequest):
        patients.ids("Patient", "birthdate=yesterday")


def test_last_updated(store):
    store.put({"resourceType": "Patient", "id": "old"}, last_updated=1_600_000_000_000_000)  # 2020-09-13
    store.put({"resourceType": "Patient", "id": "new"}, last_updated=1_700_000_000_000_000)  # 2023-11-14
    assert store.idset("Patient", "_lastUpdated=gt2021") == {"new"}
    assert store.idset("Patient", "_lastUpdated=2020-09") == {"old"}
    assert store.idset("Patient", "_lastUpdated=le2023-11-14") == {"old", "new"}
    assert store.ids("Patient", "_sort=-_lastUpdated") == ["new", "old"]


# ---------------------------------------------------------------- number / quantity

@pytest.fixture
def obs(store):
    def o(i, value, unit="mg", system="http://unitsofmeasure.org", code=None):
        store.put({"resourceType": "Observation", "id": i, "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                   "subject": {"reference": "Patient/p1"},
                   "valueQuantity": {"value": value, "unit": unit, "system": system, "code": code or unit}})
    o("o100", 100)
    o("o1005", 100.5)
    o("o99", 99.4)
    o("o54", 5.4, unit="mmol/L")
    store.put({"resourceType": "RiskAssessment", "id": "r1", "status": "final",
               "subject": {"reference": "Patient/p1"},
               "prediction": [{"probabilityDecimal": 0.25}, {"probabilityDecimal": 0.8}]})
    return store


@pytest.mark.parametrize("qs,expected", [
    ("value-quantity=100", {"o100"}),               # [99.5, 100.5]
    ("value-quantity=100.0", {"o100"}),
    ("value-quantity=1e2", {"o100", "o1005", "o99"}),   # [95, 105)
    ("value-quantity=gt100", {"o1005"}),
    ("value-quantity=ge100", {"o100", "o1005"}),
    ("value-quantity=lt100", {"o99", "o54"}),
    ("value-quantity=le99.4", {"o99", "o54"}),
    ("value-quantity=ne100", {"o1005", "o99", "o54"}),
    ("value-quantity=ap100", {"o100", "o1005", "o99"}),
    ("value-quantity=5.4|http://unitsofmeasure.org|mmol/L", {"o54"}),
    ("value-quantity=5.4|http://unitsofmeasure.org|mg", set()),
    ("value-quantity=5.4||mmol/L", {"o54"}),
    ("value-quantity=gt1||mg", {"o100", "o1005", "o99"}),
])
def test_quantity(obs, qs, expected):
    assert obs.idset("Observation", qs) == expected


def test_number(obs):
    assert obs.idset("RiskAssessment", "probability=0.8") == {"r1"}
    assert obs.idset("RiskAssessment", "probability=gt0.9") == set()
    assert obs.idset("RiskAssessment", "probability=lt0.3") == {"r1"}
    assert obs.idset("RiskAssessment", "probability=0.5") == set()
    assert obs.idset("RiskAssessment", "probability=0.3") == {"r1"}   # [0.25, 0.35)


def test_composite(obs, store):
    store.put({"resourceType": "Observation", "id": "bp", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
               "component": [
                   {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 150, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                      "code": "mm[Hg]"}},
                   {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {"value": 70, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                      "code": "mm[Hg]"}}]})
    q = "component-code-value-quantity=http://loinc.org|8480-6$gt140"
    assert store.idset("Observation", q) == {"bp"}
    assert store.idset("Observation", "component-code-value-quantity=http://loinc.org|8462-4$gt140") == set()
    assert store.idset("Observation", "component-code-value-quantity=8480-6$lt160|http://unitsofmeasure.org|mm[Hg]") == {"bp"}
    assert store.idset("Observation", "code-value-quantity=http://loinc.org|8480-6$100") == {"o100"}
    assert store.idset("Observation", "combo-code-value-quantity=8480-6$gt99.9") == {"o100", "o1005", "bp"}


# ---------------------------------------------------------------- reference

def test_reference_forms(patients):
    assert patients.idset("Patient", "organization=Organization/org1") == {"eve"}
    assert patients.idset("Patient", "organization=org1") == {"eve"}
    assert patients.idset("Patient", "organization:Organization=org1") == {"eve"}
    assert patients.idset("Patient", "organization=http://fhir.test/r4/Organization/org1") == {"eve"}
    assert patients.idset("Patient", "organization=http://other.org/fhir/Organization/org1") == {"eva"}
    # a reference written as this server's absolute URL is local
    assert patients.idset("Patient", "general-practitioner=Practitioner/pr1") == {"eve"}
    assert patients.idset("Patient", "general-practitioner:Practitioner=pr1") == {"eve"}
    assert patients.idset("Patient", "general-practitioner:Organization=pr1") == set()


def test_reference_where_resolve_is(store):
    store.put({"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"},
               "subject": {"reference": "Patient/p1"}})
    store.put({"resourceType": "Observation", "id": "b", "status": "final", "code": {"text": "x"},
               "subject": {"reference": "Group/p1"}})
    assert store.idset("Observation", "patient=p1") == {"a"}
    assert store.idset("Observation", "subject=p1") == {"a", "b"}
    assert store.idset("Observation", "subject:Group=p1") == {"b"}


def test_reference_identifier(store):
    store.put({"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"},
               "subject": {"identifier": {"system": "urn:mrn", "value": "77"}}})
    assert store.idset("Observation", "subject:identifier=urn:mrn|77") == {"a"}
    assert store.idset("Observation", "subject:identifier=78") == set()


# ---------------------------------------------------------------- uri

def test_uri_above_below(store):
    store.put({"resourceType": "ValueSet", "id": "v1", "status": "active",
               "url": "http://acme.org/fhir/ValueSet/123"})
    store.put({"resourceType": "ValueSet", "id": "v2", "status": "active",
               "url": "http://acme.org/fhir/ValueSet/123/_history/5"})
    store.put({"resourceType": "ValueSet", "id": "v3", "status": "active", "url": "http://acme.org/fhir"})
    assert store.idset("ValueSet", "url=http://acme.org/fhir/ValueSet/123") == {"v1"}
    assert store.idset("ValueSet", "url:below=http://acme.org/fhir/ValueSet/123") == {"v1", "v2"}
    assert store.idset("ValueSet", "url:above=http://acme.org/fhir/ValueSet/123/_history/5") == {"v1", "v2", "v3"}


# ---------------------------------------------------------------- errors

def test_unknown_params_strict_and_lenient(patients):
    with pytest.raises(BadRequest) as e:
        patients.ids("Patient", "nonsense=1")
    assert "nonsense" in str(e.value)
    q = patients.search.parse("Patient", [("nonsense", "1"), ("name", "chal")])
    assert q.ignored == ["nonsense"]
    assert q.issues and q.issues[0].severity == "warning"


def test_unknown_modifier_is_400(patients):
    with pytest.raises(BadRequest):
        patients.ids("Patient", "name:foo=x")
    with pytest.raises(BadRequest):
        patients.ids("Patient", "gender:in=http://vs")


def test_escaped_comma(store):
    store.put({"resourceType": "Patient", "id": "c", "name": [{"family": "a,b"}]})
    assert store.idset("Patient", "family=a\\,b") == {"c"}
    assert store.idset("Patient", "family=a,zz") == {"c"}
