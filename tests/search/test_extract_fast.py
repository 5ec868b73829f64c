"""Index extraction's fast path: ``Indexer.tuples`` (rows as tuples in ``COLUMNS`` order), the
shared-prefix walk (``Forest``) against each parameter's own program, and ``rows`` agreeing
with ``tuples``."""
import copy

import pytest

from fhirgw.search import SearchRegistry
from fhirgw.search.extract import COLUMNS, KINDS, Indexer
from fhirgw.store.tables import param_key, param_of
from fhirgw.search.fhirpath import Forest, compile_expression
from fhirgw.search.values import DATE_MAX, date_range
from fhirgw.security.audit import denied_event, disclosure_event, rest_event
from fhirgw.security.principal import Principal, Scopes
from fhirgw.store.tables import INDEX_TABLES

from .helpers import official_examples

BASE = "http://fhir.test/r4"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

BP = {
    "resourceType": "Observation", "id": "bp", "status": "final",
    "meta": {"profile": ["http://example.org/StructureDefinition/bp|4.0.1"]},
    "text": {"status": "generated",
             "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Blood <b>pressure</b> &amp; "
                    "pulse</div>"},
    "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
    "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}],
             "text": "BP"},
    "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:mrn", "value": "12345"}},
    "performer": [{"reference": f"{BASE}/Practitioner/dr/_history/2"},
                  {"reference": "https://other.example/fhir/Practitioner/x"},
                  {"reference": "#contained"}],
    "effectiveTiming": {"event": ["2026-01-05T10:00:00Z"],
                        "repeat": {"boundsPeriod": {"start": "2026-01-01", "end": "2026-01-31"}}},
    "component": [
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": 80, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"text": "position"}, "valueCodeableConcept": {"text": "sitting"}}],
}

GLUCOSE = {
    "resourceType": "Observation", "id": "g", "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "15074-8"}]},
    "effectivePeriod": {"start": "2026-02-01T08:00:00+01:00"},
    "valueQuantity": {"value": 6.3, "unit": "mmol/l", "system": UCUM, "code": "mmol/L"},
    "referenceRange": [{"low": {"value": 3.1}, "high": {"value": 6.2}}],
}

PATIENT = {
    "resourceType": "Patient", "id": "p1", "active": True, "deceasedBoolean": False,
    "identifier": [{"use": "usual", "type": {"coding": [{"system": V2_0203, "code": "MR"}],
                                             "text": "Medical record"},
                    "system": "urn:mrn", "value": "12345"},
                   {"system": "urn:ssn", "value": "999-00-0000"}],
    "name": [{"use": "official", "family": "Ödön", "given": ["Éva", "Maria"]},
             {"use": "nickname", "given": ["Evi", "Éva"]}],
    "telecom": [{"system": "phone", "value": "+1-555-0100", "use": "mobile"},
                {"system": "email", "value": "eva@example.org"}],
    "gender": "female", "birthDate": "1980-05",
    "address": [{"use": "home", "line": ["1 Main St"], "city": "Springfield", "state": "IL",
                 "postalCode": "62704"}],
    "generalPractitioner": [{"type": "Practitioner",
                             "identifier": {"system": "urn:npi", "value": "42"}}],
    "managingOrganization": {"reference": "Organization/o1"},
    "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Éva</div>"},
}

RESPONSE = {
    "resourceType": "QuestionnaireResponse", "id": "qr", "status": "completed",
    "questionnaire": "http://example.org/Questionnaire/phq9|2.0",
    "subject": {"reference": "Patient/p1"}, "authored": "2026-01-05T10:00:00.5Z",
}

CAREPLAN = {
    "resourceType": "CarePlan", "id": "cp", "status": "active", "intent": "plan",
    "subject": {"reference": "Patient/p1"}, "period": {"end": "2026-04-12"},
    "instantiatesCanonical": ["http://example.org/PlanDefinition/iop|3"],
    "activity": [
        {"detail": {"status": "scheduled", "scheduledTiming": {
            "event": ["2026-01-12T17:00:00Z", "2026-01-14T17:00:00Z"],
            "repeat": {"boundsPeriod": {"start": "2026-01-12", "end": "2026-03-31"}}}}},
        {"detail": {"status": "scheduled",
                    "scheduledPeriod": {"start": "2026-02-01", "end": "2026-02-28"}}},
        {"detail": {"status": "not-started", "scheduledString": "as needed"}}],
}

LONG = {"resourceType": "Patient", "id": "long", "gender": "g" * 300,
        "identifier": [{"system": "urn:" + "s" * 300, "value": "v" * 300}],
        "name": [{"family": "F" * 300}]}

NULLS = {"resourceType": "Patient", "id": "nulls", "identifier": [None, {"value": "1"}],
         "name": [None, {"given": [None, "A"], "family": None}, {"given": [None]}],
         "address": [{"city": None}]}

AGENT = Principal("acme-client", "Acme Referrals", Scopes.parse("system/*.rs"),
                  organization="Organization/acme", token_id="jti-1",
                  details={"address": "10.1.2.3"})
AUDITS = [
    rest_event(AGENT, "read", 200, resource_refs=["Observation/o1"], patient_refs={"Patient/p1"}),
    rest_event(None, "search-type", 200, resource_refs=["Patient/p1/_history/2"],
               patient_refs={"Patient/p1", "Patient/p2"}, query="Observation?code=x"),
    denied_event(None, "read", 401, client_id="cid", address="http://x.example/y",
                 resource_refs=["Observation/o1"], reason="no token"),
    disclosure_event(AGENT, "Organization/partner", 200, recipient_name="Partner", partner="pk",
                     address="https://partner.example/fhir", resource_refs=["Patient/p1"],
                     patient_refs={"Patient/p1"}, interaction="transaction"),
]

RESOURCES = [BP, GLUCOSE, PATIENT, RESPONSE, CAREPLAN, LONG, NULLS, *AUDITS]


@pytest.fixture
def indexer():
    return Indexer(SearchRegistry(), [BASE])


def _all_rows(indexer, res):
    """tuples() with every kind present, checked against rows() and COLUMNS; each row as
    (type, parameter, values...): its ``pid`` read back as the pair it is the key of."""
    res_type = res["resourceType"]
    before = copy.deepcopy(res)
    tuples = indexer.tuples(res_type, res)
    rows = indexer.rows(res_type, res)
    assert res == before   # extraction does not change the resource
    assert set(tuples) <= set(KINDS) and set(rows) == set(KINDS)
    for kind in KINDS:
        got = tuples.get(kind, [])
        assert all(len(t) == len(COLUMNS[kind]) for t in got), kind
        assert COLUMNS[kind][0] == "pid"
        assert all(param_key(*param_of(t[0])) == t[0] for t in got), kind
        named = [param_of(t[0]) + t[1:] for t in got]
        assert rows[kind] == [{"res_type": n[0], "param": n[1],
                               **dict(zip(COLUMNS[kind][1:], n[2:]))} for n in named], kind
    return {kind: [param_of(t[0]) + t[1:] for t in tuples.get(kind, [])] for kind in KINDS}


def _of(rows, param):
    return [r[2:] for r in rows if r[1] == param]


def test_columns_are_the_tables_columns():
    assert tuple(COLUMNS) == KINDS == tuple(INDEX_TABLES)
    for kind, table in INDEX_TABLES.items():
        assert COLUMNS[kind] == tuple(c.name for c in table.columns if c.name != "rid"), kind


@pytest.mark.parametrize("res", RESOURCES, ids=lambda r: f"{r['resourceType']}-{r.get('id', '')}")
def test_tuples_and_rows_agree(indexer, res):
    rows = _all_rows(indexer, res)
    assert sum(map(len, rows.values())) > 1
    again = indexer.tuples(res["resourceType"], res)
    for kind in KINDS:   # every call gives new lists
        again.setdefault(kind, []).append(("changed",))
    assert _all_rows(indexer, res) == rows


def test_composites_and_components(indexer):
    rows = _all_rows(indexer, BP)
    comp = rows["composite"]
    ccvq = _of(comp, "component-code-value-quantity")
    assert ("8480-6$http://unitsofmeasure.org|mm[Hg]", 120.0, 120.0) in ccvq
    assert ("http://loinc.org|8462-4$|mmHg", 80.0, 80.0) in ccvq
    assert ("8480-6$", 120.0, 120.0) in ccvq and ("8462-4$", 80.0, 80.0) in ccvq
    # a pair is a code and value of one component, never across components
    assert not any(k.startswith("8480-6$") and lo == 80.0 for k, lo, _hi in ccvq)
    assert _of(comp, "code-value-quantity") == []   # no Observation.value
    # combo-code is code | component-code (derived): those two have the rows
    assert _of(rows["token"], "combo-code") == []
    assert [c for _s, c, _t in _of(rows["token"], "code") if c] == ["85354-9"]
    assert [c for _s, c, _t in _of(rows["token"], "component-code") if c] == ["8480-6",
                                                                               "8462-4"]
    assert ("position$sitting", None, None) not in _of(comp, "component-code-value-concept")

    rows = _all_rows(indexer, GLUCOSE)
    cvq = _of(rows["composite"], "code-value-quantity")
    assert ("http://loinc.org|15074-8$http://unitsofmeasure.org|mmol/L", 6.3, 6.3) in cvq
    assert ("15074-8$|mmol/l", 6.3, 6.3) in cvq
    assert _of(rows["quantity"], "value-quantity") == [(6.3, 6.3, 6.3, UCUM, "mmol/L", "mmol/l")]
    assert _of(rows["date"], "date") == [(date_range("2026-02-01T08:00:00+01:00")[0], DATE_MAX)]


def test_references_identifiers_and_canonicals(indexer):
    rows = _all_rows(indexer, BP)
    assert _of(rows["reference"], "subject") == [("Patient", "p1", None)]
    assert _of(rows["reference"], "patient") == []   # derived from subject's rows
    assert _of(rows["token"], "subject:identifier") == [("urn:mrn", "12345", None)]
    assert _of(rows["token"], "patient:identifier") == [("urn:mrn", "12345", None)]
    assert _of(rows["reference"], "performer") == [   # local (base dropped, any version)
        ("Practitioner", "dr", None),
        ("Practitioner", None, "https://other.example/fhir/Practitioner/x")]
    assert _of(rows["uri"], "_profile") == [("http://example.org/StructureDefinition/bp|4.0.1",),
                                            ("http://example.org/StructureDefinition/bp",)]

    rows = _all_rows(indexer, PATIENT)
    assert _of(rows["reference"], "general-practitioner") == []
    assert _of(rows["token"], "general-practitioner:identifier") == [("urn:npi", "42", None)]
    assert _of(rows["reference"], "organization") == [("Organization", "o1", None)]

    rows = _all_rows(indexer, RESPONSE)
    assert _of(rows["reference"], "questionnaire") == [
        ("Questionnaire", None, "http://example.org/Questionnaire/phq9|2.0"),
        ("Questionnaire", None, "http://example.org/Questionnaire/phq9")]
    rows = _all_rows(indexer, CAREPLAN)
    assert _of(rows["reference"], "instantiates-canonical") == [
        ("PlanDefinition", None, "http://example.org/PlanDefinition/iop|3"),
        ("PlanDefinition", None, "http://example.org/PlanDefinition/iop")]


def test_identifier_of_type_strings_and_text(indexer):
    rows = _all_rows(indexer, PATIENT)
    assert _of(rows["token"], "identifier") == [("urn:mrn", "12345", "medical record"),
                                                ("urn:ssn", "999-00-0000", None)]
    assert _of(rows["token"], "identifier:of-type") == [(V2_0203, "MR|12345", None)]
    # phone and email are telecom's rows of their system (derived: none of their own)
    assert ("email", "eva@example.org", None) in _of(rows["token"], "telecom")
    assert ("phone", "+1-555-0100", None) in _of(rows["token"], "telecom")
    assert _of(rows["token"], "email") == _of(rows["token"], "phone") == []
    assert _of(rows["token"], "deceased") == [(None, "false", None)]
    assert _of(rows["token"], "active") == [(None, "true", None)]
    assert _of(rows["string"], "given") == [("eva", "Éva"), ("maria", "Maria"), ("evi", "Evi")]
    assert _of(rows["string"], "family") == [("odon", "Ödön")]
    # a HumanName's family and given names are the rows of family and given: name (and
    # phonetic, its expression) keeps the rest (text, prefix, suffix), none here
    assert _of(rows["string"], "name") == _of(rows["string"], "phonetic") == []
    assert _of(rows["string"], "address-city") == [("springfield", "Springfield")]
    assert _of(rows["string"], "_text") == [("eva", "Éva")]
    assert _of(rows["date"], "birthdate") == [date_range("1980-05")]

    rows = _all_rows(indexer, BP)
    assert _of(rows["string"], "_text") == [("blood pressure & pulse", "Blood pressure & pulse")]

    rows = _all_rows(indexer, LONG)   # columns cut to their width
    assert _of(rows["token"], "identifier") == [("urn:" + "s" * 251, "v" * 255, None)]
    assert _of(rows["string"], "family") == [("f" * 255, "F" * 300)]
    assert _of(rows["token"], "gender") == [(None, "g" * 255, None)]

    rows = _all_rows(indexer, NULLS)   # JSON nulls are no values
    assert _of(rows["token"], "identifier") == [(None, "1", None)]
    assert _of(rows["string"], "given") == [("a", "A")]
    assert _of(rows["string"], "family") == _of(rows["string"], "address-city") == []


def test_timing_and_period_dates(indexer):
    rows = _all_rows(indexer, BP)
    assert _of(rows["date"], "date") == [date_range("2026-01-05T10:00:00Z"),
                                         (date_range("2026-01-01")[0], date_range("2026-01-31")[1])]
    rows = _all_rows(indexer, CAREPLAN)
    assert _of(rows["date"], "activity-date") == [
        date_range("2026-01-12T17:00:00Z"), date_range("2026-01-14T17:00:00Z"),
        (date_range("2026-01-12")[0], date_range("2026-03-31")[1]),
        (date_range("2026-02-01")[0], date_range("2026-02-28")[1])]
    assert _of(rows["date"], "date") == [(-(2 ** 62), date_range("2026-04-12")[1])]
    rows = _all_rows(indexer, RESPONSE)
    lo, hi = _of(rows["date"], "authored")[0]
    assert hi - lo == 99_999


def test_audit_event_rows(indexer):
    rows = _all_rows(indexer, AUDITS[0])
    assert _of(rows["reference"], "agent") == [("Organization", "acme", None)]
    assert _of(rows["reference"], "entity") == [("Observation", "o1", None),
                                                ("Patient", "p1", None)]
    assert _of(rows["reference"], "patient") == []   # derived: agent's and entity's Patients
    assert _of(rows["token"], "altid") == [(None, "acme-client", None)]
    assert _of(rows["string"], "address") == [("10.1.2.3", "10.1.2.3")]
    assert _of(rows["uri"], "policy") == [("jti-1",)]
    assert [c for _s, c, _t in _of(rows["token"], "entity-role")] == ["4", "1"]


def test_custom_parameters_at_run_time():
    registry = SearchRegistry()
    indexer = Indexer(registry, [BASE])
    race = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
    patient = {**PATIENT, "extension": [{"url": race, "extension": [{
        "url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                              "code": "2106-3"}}]}]}
    assert _of(_all_rows(indexer, patient)["token"], "race") == []
    registry.add({"url": "http://example.org/sp/race", "code": "race", "base": ["Patient"],
                  "type": "token",
                  "expression": f"Patient.extension('{race}').extension('ombCategory').value"})
    # shares Patient.name with official parameters
    registry.add({"url": "http://example.org/sp/nick", "code": "nick", "base": ["Patient"],
                  "type": "string", "expression": "Patient.name.where(use = 'nickname').given"})
    # not compiled: runs on fhirpathpy
    registry.add({"url": "http://example.org/sp/work-email", "code": "work-email",
                  "base": ["Patient"], "type": "token",
                  "expression": "Patient.telecom.where(system = 'email' or use = 'work').value"})
    # replaces the official one
    registry.add({"url": "http://example.org/sp/family", "code": "family", "base": ["Patient"],
                  "type": "string", "expression": "Patient.name.where(use = 'official').family"})
    rows = _all_rows(indexer, patient)
    assert _of(rows["token"], "race") == [("urn:oid:2.16.840.1.113883.6.238", "2106-3", None)]
    assert _of(rows["string"], "nick") == [("evi", "Evi"), ("eva", "Éva")]
    assert _of(rows["token"], "work-email") == [(None, "eva@example.org", None)]
    assert _of(rows["string"], "family") == [("odon", "Ödön")]
    assert _of(rows["string"], "given") == [("eva", "Éva"), ("maria", "Maria"), ("evi", "Evi")]
    registry.remove("http://example.org/sp/race")
    assert _of(_all_rows(indexer, patient)["token"], "race") == []


def _examples():
    return official_examples(step=7)


def test_forest_gives_each_program_its_values():
    """The shared walk finds, per parameter, what its own program finds, in the same order
    (and so do the composites' components, per node)."""
    registry = SearchRegistry()
    resources = [*RESOURCES, *_examples()]
    n = 0
    for res in resources:
        res_type = res["resourceType"]
        programs, components = [], {}
        for sp in registry.params_for(res_type).values():
            prog = sp.program(res_type)
            if prog is None or prog.empty:
                continue
            programs.append(prog)
            for c in sp.components:
                cprog = compile_expression(c.expression, res_type, "*")
                components[id(cprog)] = cprog
        found = Forest(programs).run(res)
        expected = {i: prog(res) for i, prog in enumerate(programs)}
        assert found == {i: v for i, v in expected.items() if v}, res_type
        n += len(found)
        comps = list(components.values())
        forest = Forest(comps)
        for i, prog in enumerate(programs):
            if components and i in found:
                for node, _t in found[i]:
                    got = forest.run(node, res)
                    want = {j: c(node, res) for j, c in enumerate(comps)}
                    assert got == {j: v for j, v in want.items() if v}, res_type
    assert n > 50
