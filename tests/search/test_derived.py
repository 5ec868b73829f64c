"""Derived parameters (``SearchRegistry.derived``): ``Condition.patient`` is
``Condition.subject.where(resolve() is Patient)``, so it has no index rows of its own and
every search on it reads ``subject``'s rows whose target is a Patient; likewise
``Patient.phone`` (``telecom``'s rows of system ``phone``) and ``Patient.phonetic``
(``name``'s expression)."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from fhirgw.model.resources import SUPPORTED
from fhirgw.search import SearchRegistry
from fhirgw.search.extract import Indexer
from fhirgw.search.registry import Derived
from fhirgw.store.tables import INDEX_COLUMNS, param_key

from .helpers import Store, official_examples


PATIENT = ("target_type", ("Patient",))


def test_the_official_pairs():
    reg = SearchRegistry()
    assert reg.derived("Condition", "patient") == Derived("subject", *PATIENT)
    assert reg.derived("Observation", "patient") == Derived("subject", *PATIENT)
    assert reg.derived("Appointment", "patient") == Derived("actor", *PATIENT)
    assert reg.derived("Appointment", "location") == Derived("actor", "target_type",
                                                             ("Location",))
    assert reg.derived("Encounter", "practitioner") == Derived("participant", "target_type",
                                                               ("Practitioner",))
    assert reg.derived("Patient", "phone") == Derived("telecom", "system", ("phone",))
    assert reg.derived("Practitioner", "email") == Derived("telecom", "system", ("email",))
    assert reg.derived("Condition", "patient").values == ("Patient",)
    # a base has rows of its own; a parameter not of those shapes is no pair
    assert reg.derived("Condition", "subject") is None
    assert reg.derived("Patient", "telecom") is None and reg.derived("Patient", "family") is None
    # wholes: a HumanName's or an Address's parameter keeps rows for the fields that have
    # no parameter of their own, and finds the others in theirs
    parts = (Derived("family"), Derived("given"))
    assert reg.derived("Patient", "name") == Derived("name", more=parts,
                                                     leaves_out=("family", "given"))
    assert reg.derived("Practitioner", "name") == reg.derived("Patient", "name")
    assert reg.derived("Patient", "phonetic") == Derived("name", more=parts)   # name's expression
    assert reg.derived("Person", "phonetic") == Derived("name")   # Person: no family, given
    assert reg.derived("Person", "name") is None
    address = reg.derived("Location", "address")
    assert address.base == "address" and address.leaves_out == (
        "city", "country", "postalCode", "state")
    assert [t.base for t in address.more] == [
        "address-city", "address-country", "address-postalcode", "address-state"]
    assert reg.derived("RelatedPerson", "name") is None   # no family, given
    # unions: each part another's rows (filtered)
    assert reg.derived("Observation", "combo-code") == Derived(
        "code", more=(Derived("component-code"),))
    assert reg.derived("AuditEvent", "patient") == Derived(
        "agent", *PATIENT, more=(Derived("entity", *PATIENT),))
    assert reg.derived("Observation", "combo-value-quantity") is None   # value.as(Quantity)
    assert reg.derived("Patient", "general-practitioner") is None
    assert reg.derived("Patient", "address-use") is None   # address.use: not a system
    pairs = [(t, c) for t in SUPPORTED for c in reg.params_for(t) if reg.derived(t, c)]
    wholes = [(t, c) for t, c in pairs if reg.derived(t, c).leaves_out]
    assert len(pairs) == 75 + len(wholes) and len(wholes) == 9
    for t, c in pairs:
        for term in reg.derived(t, c).terms:
            # a term has rows of its own: a plain parameter, or a whole (itself, or the
            # whole of the same expression)
            base = reg.derived(t, term.base)
            assert base is None or (base.leaves_out and term.base in (c, reg.derived(t, c).base))
            assert reg.get(t, term.base).type == reg.get(t, c).type


def test_a_custom_parameter_ends_the_pairing():
    reg = SearchRegistry()
    reg.add({"resourceType": "SearchParameter", "url": "http://example.org/sp/subject",
             "code": "subject", "base": ["Condition"], "type": "reference",
             "expression": "Condition.subject | Condition.asserter", "status": "active"})
    assert reg.derived("Condition", "patient") is None     # its base is not the official one
    assert reg.derived("Observation", "patient") == Derived("subject", *PATIENT)
    reg.remove("http://example.org/sp/subject")
    assert reg.derived("Condition", "patient") == Derived("subject", *PATIENT)
    # a custom part of a whole: the whole keeps that field's values in its own rows again
    given = {"resourceType": "SearchParameter", "url": "http://example.org/sp/given",
             "code": "given", "base": ["Patient"], "type": "string", "status": "active",
             "expression": "Patient.name.where(use != 'old').given"}
    reg.add(given)
    assert reg.derived("Patient", "name") == Derived("name", more=(Derived("family"),),
                                                     leaves_out=("family",))
    rows = Indexer(reg).tuples("Patient", {"resourceType": "Patient", "name": [
        {"family": "Lindqvist", "given": ["Maja"]}]})["string"]
    assert (param_key("Patient", "name"), "maja", "Maja") in rows
    assert not [r for r in rows if r[0] == param_key("Patient", "name") and r[2] == "Lindqvist"]
    reg.remove(given["url"])
    assert reg.derived("Patient", "name").leaves_out == ("family", "given")


def test_derived_rows_are_the_base_rows_they_name():
    """On every official example (and a few values of unusual shapes): the rows a derived
    parameter had of its own are exactly its base's rows with one of its values in its
    column (all of them for the same expression), and its special rows (``:identifier``,
    ``:of-type``) stay as they were."""
    reg = SearchRegistry()
    old = Indexer(reg, ["http://fhir.test/r4"], derive=False)
    new = Indexer(reg, ["http://fhir.test/r4"])
    odd = {"resourceType": "Condition", "id": "x", "subject": {"reference": "Group/g1"},
           "asserter": {"reference": "Patient/p9"}}
    shapes = [
        {"reference": "Patient/p1"}, {"reference": "Patient/p1/_history/2"},
        {"reference": "http://fhir.test/r4/Patient/p2"},
        {"reference": "https://other.example/fhir/Patient/p3"},
        {"reference": "urn:uuid:0b2e8f0a-1c1f-4a52-9a3e-54a1b1b1b1b1", "type": "Patient"},
        {"reference": "Group/g1"}, {"type": "Patient", "identifier": {"value": "mrn-1"}},
        {"identifier": {"system": "urn:mrn", "value": "mrn-2"}}]
    person = {"resourceType": "Patient", "id": "p",
              "name": [{"family": "Ödön", "given": ["A"]},
                       {"text": "Dr. A. Ödön", "prefix": ["Dr."], "given": ["A", "B"],
                        "suffix": ["Ödön"], "_given": [None, {"extension": [
                            {"url": "http://example.org/x", "valueString": "hidden"}]}]}],
              "address": [{"line": ["1 Main St", "Apt 2"], "city": "Springfield",
                           "state": "IL", "postalCode": "62701", "district": "Sangamon",
                           "text": "1 Main St, Springfield"}, {"city": "Springfield"}],
              "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@b"},
                          {"system": "phone", "value": "555"}, {"value": "no system"},
                          {"system": "fax", "value": "556"}]}
    resources = [odd, person, *({**odd, "subject": s} for s in shapes), *official_examples()]
    if len(resources) < 100:
        pytest.skip("official examples package not fetched (make test-data)")
    compared = wholes = 0
    for res in resources:
        t = res["resourceType"]
        before, after = old.tuples(t, res), new.tuples(t, res)
        for code, sp in reg.params_for(t).items():
            d = reg.derived(t, code)
            if d is None:
                continue
            kind = sp.type
            columns = INDEX_COLUMNS[kind]
            own = {r[1:] for r in before[kind] if r[0] == param_key(t, code)}
            found = set()
            for term in d.terms:   # a union's parts each name rows of their own base
                at = columns.index(term.column) if term.column else None
                base = param_key(t, term.base)
                found |= {r[1:] for r in after[kind]
                          if r[0] == base and (at is None or r[at] in term.values)}
            assert own == found, (t, code, res.get("id"))
            kept = {r[1:] for r in after[kind] if r[0] == param_key(t, code)}
            if d.leaves_out:   # a whole: its own rows are its fields' but the parts'
                assert kept <= own
                wholes += len(kept) < len(own)
            else:
                assert not kept
            for special in (code + ":identifier", code + ":of-type"):
                key = param_key(t, special)
                assert ([r for r in before["token"] if r[0] == key]
                        == [r for r in after["token"] if r[0] == key])
            compared += len(own)
    assert compared > 300 and wholes > 20


@pytest.fixture
def world(engine):
    store = Store(engine)
    P = store.put
    P({"resourceType": "Patient", "id": "p1", "name": [{"family": "Alpha"}],
       "telecom": [{"system": "phone", "value": "+1-555-0101"},
                   {"system": "email", "value": "alpha@example.org"}]})
    P({"resourceType": "Patient", "id": "p2", "name": [{"family": "Beta"}]})
    P({"resourceType": "Patient", "id": "p3",
       "name": [{"text": "Dr. Maja Lindqvist", "prefix": ["Dr."], "family": "Lindqvist",
                 "given": ["Maja"]}],
       "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "IL",
                    "postalCode": "62701"}]})
    P({"resourceType": "Group", "id": "g1", "type": "person", "actual": True})
    P({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "House"}]})
    P({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
       "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]}})
    P({"resourceType": "Condition", "id": "c2", "subject": {"reference": "Group/g1"}})
    P({"resourceType": "Condition", "id": "c3",
       "subject": {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "7"}}})
    P({"resourceType": "Observation", "id": "o1", "status": "final",
       "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
       "subject": {"reference": "Patient/p1"},
       "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                      "valueQuantity": {"value": 120}}]})
    P({"resourceType": "AuditEvent", "id": "ae1", "recorded": "2026-01-01T00:00:00Z",
       "type": {"code": "rest"}, "source": {"observer": {"display": "fhirgw"}},
       "agent": [{"requestor": True, "who": {"display": "EHR"}}],
       "entity": [{"what": {"reference": "Condition/c1"}},
                  {"what": {"reference": "Patient/p1"}}]})
    P({"resourceType": "Appointment", "id": "a1", "status": "booked", "participant": [
        {"actor": {"reference": "Patient/p2"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/dr"}, "status": "accepted"}]})
    return store


def test_searches_on_a_derived_parameter(world):
    def q(res_type, qs, **kw):   # the ids found, included ones too, sorted
        page = world.query(res_type, qs, **kw)
        return sorted(m[1] for m in [*page.matches, *page.included])

    assert q("Condition", "patient=Patient/p1") == ["c1"]
    assert q("Condition", "patient=p1") == ["c1"]
    assert q("Condition", "patient=Group/g1") == []          # a subject, not a patient
    assert q("Condition", "subject=Group/g1") == ["c2"]
    assert q("Condition", "patient:missing=true") == ["c2", "c3"]
    assert q("Condition", "patient:missing=false") == ["c1"]
    assert q("Condition", "patient:identifier=urn:mrn|7") == ["c3"]
    assert q("Condition", "patient.name=alpha") == ["c1"]   # chain
    assert q("Appointment", "patient=p2") == ["a1"]
    assert q("Appointment", "practitioner=dr") == ["a1"]
    assert q("Appointment", "patient=dr") == []
    assert q("Patient", "_has:Condition:patient:code=35489007") == ["p1"]
    assert q("Patient", "_has:Appointment:patient:status=booked") == ["p2"]
    assert q("Condition", "patient=p1&_include=Condition:patient") == ["c1", "p1"]
    assert q("Patient", "_id=p1&_revinclude=Condition:patient") == ["c1", "p1"]
    assert q("Patient", "_id=p1,p2&_revinclude=Appointment:patient") == ["a1", "p1", "p2"]
    assert q("Condition", "_id=c2&_include=Condition:patient") == ["c2"]
    assert q("Observation", "combo-code=85354-9") == ["o1"]        # the code
    assert q("Observation", "combo-code=http://loinc.org|8480-6") == ["o1"]   # a component's
    assert q("Observation", "code=8480-6") == []
    assert q("Observation", "combo-code:missing=true") == []
    assert q("AuditEvent", "patient=p1") == ["ae1"]               # an entity that is a Patient
    assert q("AuditEvent", "patient=Condition/c1") == []
    assert q("AuditEvent", "entity=Condition/c1") == ["ae1"]
    assert q("Patient", "phone=%2B1-555-0101") == ["p1"]
    assert q("Patient", "email=%2B1-555-0101") == []              # a phone, not an email
    assert q("Patient", "email=alpha@example.org") == ["p1"]
    assert q("Patient", "telecom=alpha@example.org") == ["p1"]
    assert q("Patient", "phone:missing=true") == ["p2", "p3"]
    assert q("Patient", "phonetic=alph") == ["p1"]
    assert q("Patient", "phonetic:exact=Beta") == ["p2"]
    assert q("Patient", "phonetic=maja") == ["p3"]                # a given name
    # a whole: its own rows (text, prefix, line) and its parts' (family, given, city, ...)
    assert q("Patient", "name=alph") == ["p1"]
    assert q("Patient", "name=maja") == ["p3"]
    assert q("Patient", "name=dr") == ["p3"]
    assert q("Patient", "name:exact=Dr. Maja Lindqvist") == ["p3"]
    assert q("Patient", "name:exact=Lindqvist") == ["p3"]
    assert q("Patient", "name:contains=ndqv") == ["p3"]
    assert q("Patient", "name=springfield") == []
    assert q("Patient", "name:missing=true") == []
    assert q("Patient", "given=dr") == []                          # a prefix, not a given name
    assert q("Patient", "address=springfield") == ["p3"]
    assert q("Patient", "address=1 main") == ["p3"]
    assert q("Patient", "address=62701") == ["p3"]
    assert q("Patient", "address-city=springfield") == ["p3"]
    assert q("Patient", "address:missing=true") == ["p1", "p2"]
    assert q("Patient", "address-state=springfield") == []
    assert q("Practitioner", "name=house") == ["dr"]
    # sorted by the least (the greatest, descending) of all of the rows
    assert [m[1] for m in world.query("Patient", "_sort=name").matches] == ["p1", "p2", "p3"]
    assert [m[1] for m in world.query("Patient", "_sort=-name").matches] == ["p3", "p2", "p1"]
    assert [m[1] for m in world.query("Patient", "_sort=phonetic").matches] == ["p1", "p2", "p3"]
    # the Patient compartment lists Condition by patient (and asserter)
    assert q("Condition", "", compartment=("Patient", "p1")) == ["c1"]
    assert q("Appointment", "", compartment=("Patient", "p2")) == ["a1"]


def test_no_rows_are_written_for_a_derived_parameter(world, engine):
    with engine.connect() as conn:
        pids = {r[0] for r in conn.exec_driver_sql("SELECT DISTINCT pid FROM sp_reference")}
    assert param_key("Condition", "subject") in pids
    assert param_key("Condition", "patient") not in pids
    assert param_key("Appointment", "patient") not in pids
    with engine.connect() as conn:
        keys = {r[0] for r in conn.exec_driver_sql("SELECT DISTINCT pid FROM sp_token")}
        names = {r[0] for r in conn.exec_driver_sql("SELECT DISTINCT pid FROM sp_string")}
    assert param_key("Patient", "telecom") in keys and param_key("Patient", "phone") not in keys
    assert param_key("Observation", "code") in keys
    assert param_key("Observation", "combo-code") not in keys
    assert param_key("AuditEvent", "patient") not in pids
    assert param_key("Patient", "phonetic") not in names
    assert param_key("Patient", "family") in names and param_key("Patient", "given") in names
    with engine.connect() as conn:   # a whole: only the strings its parts do not hold
        own = sorted(r[0] for r in conn.execute(text(
            "SELECT exact FROM sp_string WHERE pid IN (:n, :a)"),
            {"n": param_key("Patient", "name"), "a": param_key("Patient", "address")}))
    assert own == ["1 Main St", "Dr.", "Dr. Maja Lindqvist"]


def test_a_parameter_paired_again_warns_while_its_type_reindexes(engine):
    """A custom ``telecom`` ends ``phone``'s pairing: until the reindex of Patient it
    started has written ``phone``'s own rows, a search on ``phone`` says it may miss some."""
    from fhirgw.search import SearchEngine
    from fhirgw.search.custom import CustomParameters

    reg = SearchRegistry()
    custom = CustomParameters(reg, engine)
    url = "http://example.org/sp/telecom"
    reg.add({"resourceType": "SearchParameter", "url": url, "code": "telecom",
             "base": ["Patient"], "type": "token", "status": "active",
             "expression": "Patient.telecom | Patient.contact.telecom"})
    search = SearchEngine(reg)
    phone = search.parse("Patient", [("phone", "555")])
    observation = search.parse("Observation", [("patient", "p1")])
    assert custom.warnings_for(phone) == []          # no reindex running
    custom.pending[url] = ("Patient",)
    issues = custom.warnings_for(phone)
    assert len(issues) == 1 and issues[0].code == "incomplete"
    assert "'phone'" in issues[0].diagnostics and "replaced" in issues[0].diagnostics
    assert custom.warnings_for(observation) == []    # still paired, nothing to wait for
    assert "was added recently" in custom.warnings_for(
        search.parse("Patient", [("telecom", "555")]))[0].diagnostics
    custom.reindexed(url)
    assert custom.warnings_for(phone) == []
    # a whole whose part a custom one replaced writes that part's values itself again
    url = "http://example.org/sp/family"
    reg.add({"resourceType": "SearchParameter", "url": url, "code": "family",
             "base": ["Patient"], "type": "string", "status": "active",
             "expression": "Patient.name.where(use = 'official').family"})
    name = search.parse("Patient", [("name", "lindq")])
    custom.pending[url] = ("Patient",)
    issues = custom.warnings_for(name)
    assert len(issues) == 1 and "'name'" in issues[0].diagnostics
    custom.reindexed(url)
    assert custom.warnings_for(name) == []
