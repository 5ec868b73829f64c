"""Chains, _has, _include/_revinclude, _sort, keyset paging, _total, compartments, find()."""
import pytest

from fhirgw.model.errors import BadRequest
from fhirgw.search import SearchEngine, apply_elements


@pytest.fixture
def world(store):
    P = store.put
    P({"resourceType": "Organization", "id": "org1", "name": "Acme Clinic"})
    P({"resourceType": "Patient", "id": "p1", "name": [{"family": "Alpha"}],
       "identifier": [{"system": "urn:mrn", "value": "1"}],
       "managingOrganization": {"reference": "Organization/org1"}})
    P({"resourceType": "Patient", "id": "p2", "name": [{"family": "Beta"}],
       "identifier": [{"system": "urn:mrn", "value": "2"}]})
    P({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "House"}]})
    P({"resourceType": "Appointment", "id": "a1", "status": "booked",
       "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"},
                       {"actor": {"reference": "Practitioner/dr"}, "status": "accepted"}]})
    P({"resourceType": "Appointment", "id": "a2", "status": "booked",
       "participant": [{"actor": {"reference": "Patient/p2"}, "status": "accepted"}]})
    P({"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "intent": "order",
       "subject": {"reference": "Patient/p1"},
       "code": {"coding": [{"system": "http://snomed.info/sct", "code": "304891004"}]}})
    P({"resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
       "focus": {"reference": "ServiceRequest/sr1"}, "for": {"reference": "Patient/p1"}})
    P({"resourceType": "Task", "id": "t2", "status": "requested", "intent": "order",
       "focus": {"reference": "Patient/p2"}, "for": {"reference": "Patient/p2"}})
    for i, (pid, code) in enumerate([("p1", "8480-6"), ("p1", "8462-4"), ("p2", "8480-6")]):
        P({"resourceType": "Observation", "id": f"o{i}", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "subject": {"reference": f"Patient/{pid}"}, "performer": [{"reference": "Practitioner/dr"}],
           "effectiveDateTime": f"2026-01-0{i + 1}"})
    P({"resourceType": "Provenance", "id": "prov1", "recorded": "2026-01-01T00:00:00Z",
       "target": [{"reference": "Observation/o0"}], "agent": [{"who": {"reference": "Practitioner/dr"}}]})
    return store


def test_chain(world):
    assert world.idset("Appointment", "patient.identifier=urn:mrn|1") == {"a1"}
    assert world.idset("Appointment", "actor:Patient.name=beta") == {"a2"}
    assert world.idset("Task", "focus:ServiceRequest.code=http://snomed.info/sct|304891004") == {"t1"}
    assert world.idset("Observation", "subject:Patient.organization.name=acme") == {"o0", "o1"}
    assert world.idset("Observation", "patient._id=p2") == {"o2"}


def test_chain_skips_deleted_targets(world):
    world.delete("Patient", "p2")
    assert world.idset("Appointment", "patient.identifier=urn:mrn|2") == set()


def test_has(world):
    assert world.idset("Patient", "_has:Observation:patient:code=8462-4") == {"p1"}
    assert world.idset("Patient", "_has:Observation:patient:code=8480-6") == {"p1", "p2"}
    assert world.idset("Patient", "_has:Task:patient:focus:ServiceRequest.code=304891004") == {"p1"}
    assert world.idset("Practitioner", "_has:Observation:performer:_has:Provenance:target:_id=prov1") == {"dr"}
    assert world.idset("Patient", "_has:Appointment:patient:status=cancelled") == set()


def test_has_plans_agree(world):
    """_has runs as an id list (selective inner criterion) or per candidate row (broad, as
    the engine's probe decides): both forms find the same resources."""
    queries = [("Patient", "_has:Observation:patient:code=8462-4"),
               ("Patient", "_has:Observation:patient:code=8480-6"),
               ("Patient", "_has:Task:patient:focus:ServiceRequest.code=304891004"),
               ("Practitioner", "_has:Observation:performer:_has:Provenance:target:_id=prov1"),
               ("Patient", "_has:Appointment:patient:status=cancelled"),
               ("Patient", "_has:Observation:patient:code=8480-6&_id=p2")]
    selective = [world.idset(t, q) for t, q in queries]
    world.search.HAS_BROAD = 1          # every inner criterion now counts as broad
    try:
        assert [world.idset(t, q) for t, q in queries] == selective
    finally:
        del world.search.HAS_BROAD
    assert selective[1] == {"p1", "p2"} and selective[5] == {"p2"}


def _page(store, res_type, qs, **kw):
    return store.query(res_type, qs, **kw)


def test_include_and_revinclude(world):
    page = _page(world, "Observation", "code=8462-4&_include=Observation:patient&_include=Observation:performer")
    assert [m[1] for m in page.matches] == ["o1"]
    assert {(t, i) for t, i, _ in page.included} == {("Patient", "p1"), ("Practitioner", "dr")}
    page = _page(world, "Patient", "_id=p1&_revinclude=Observation:subject")
    assert {(t, i) for t, i, _ in page.included} == {("Observation", "o0"), ("Observation", "o1")}
    page = _page(world, "Observation", "_id=o0&_include=*")
    assert {i for _, i, _ in page.included} == {"p1", "dr"}
    page = _page(world, "Observation", "_id=o0&_include=Observation:performer:Patient")
    assert page.included == []


def test_revinclude_wildcards(world):
    """``*`` as the parameter (or the whole directive) reads every reference parameter of
    the source type (of every type): each a lookup by (type, parameter, target)."""
    page = _page(world, "Patient", "_id=p1&_revinclude=Observation:*")
    assert {(t, i) for t, i, _ in page.included} == {("Observation", "o0"), ("Observation", "o1")}
    page = _page(world, "Practitioner", "_id=dr&_revinclude=*")
    assert {(t, i) for t, i, _ in page.included} == {
        ("Appointment", "a1"), ("Observation", "o0"), ("Observation", "o1"),
        ("Observation", "o2"), ("Provenance", "prov1")}
    page = _page(world, "Patient", "_id=p1,p2&_revinclude=*")
    assert {(t, i) for t, i, _ in page.included} == {
        ("Appointment", "a1"), ("Appointment", "a2"), ("ServiceRequest", "sr1"),
        ("Task", "t1"), ("Task", "t2"), ("Observation", "o0"), ("Observation", "o1"),
        ("Observation", "o2")}
    page = _page(world, "Patient", "_id=p1&_revinclude=Task:*:Patient")
    assert {(t, i) for t, i, _ in page.included} == {("Task", "t1")}


def test_include_iterate(world):
    page = _page(world, "Observation", "_id=o0&_include=Observation:patient"
                                        "&_include:iterate=Patient:organization")
    assert {i for _, i, _ in page.included} == {"p1", "org1"}
    page = _page(world, "Observation", "_id=o0&_include=Observation:patient"
                                        "&_include=Patient:organization")
    assert {i for _, i, _ in page.included} == {"p1"}   # not iterated
    page = _page(world, "Patient", "_id=p1&_revinclude=Observation:patient"
                                    "&_revinclude:iterate=Provenance:target")
    assert {i for _, i, _ in page.included} == {"o0", "o1", "prov1"}


def test_include_cap_is_reported(world, monkeypatch):
    import fhirgw.search.engine as eng
    monkeypatch.setattr(eng, "MAX_INCLUDES", 1)
    page = _page(world, "Observation", "_id=o0&_include=*")
    assert len(page.included) == 1
    assert any(i.code == "too-costly" for i in page.issues)


def test_sort(world):
    assert world.ids("Observation", "_sort=date") == ["o0", "o1", "o2"]
    assert world.ids("Observation", "_sort=-date") == ["o2", "o1", "o0"]
    assert world.ids("Observation", "_sort=patient,-date") == ["o1", "o0", "o2"]
    assert world.ids("Patient", "_sort=-family") == ["p2", "p1"]
    # resources without the value sort last either way
    world.put({"resourceType": "Observation", "id": "nodate", "status": "final", "code": {"text": "x"}})
    assert world.ids("Observation", "_sort=date")[-1] == "nodate"
    assert world.ids("Observation", "_sort=-date")[-1] == "nodate"
    with pytest.raises(BadRequest):
        world.ids("Observation", "_sort=nonsense")


@pytest.mark.parametrize("sort", ["", "_sort=family", "_sort=-family,_id", "_sort=-birthdate"])
def test_keyset_paging_walks_every_row_once_and_back(store, sort):
    for i in range(23):
        store.put({"resourceType": "Patient", "id": f"x{i:02d}", "name": [{"family": f"n{i % 5}"}],
                   **({"birthDate": f"19{50 + i % 7}"} if i % 3 else {})})
    qs = f"_count=5&{sort}"
    pages, cursor = [], None
    while True:
        page = store.query("Patient", qs, cursor=cursor)
        pages.append([m[1] for m in page.matches])
        cursor = page.next_cursor
        if cursor is None:
            break
    flat = [i for p in pages for i in p]
    assert sorted(flat) == sorted(f"x{i:02d}" for i in range(23))
    assert len(pages) == 5
    # and back with prev cursors
    page = store.query("Patient", qs, cursor=None)
    for _ in range(3):
        page = store.query("Patient", qs, cursor=page.next_cursor)
    assert [m[1] for m in page.matches] == pages[3]
    back = store.query("Patient", qs, cursor=page.prev_cursor)
    assert [m[1] for m in back.matches] == pages[2]


def test_paging_is_stable_while_data_changes(store):
    for i in range(10):
        store.put({"resourceType": "Patient", "id": f"y{i}"})
    p1 = store.query("Patient", "_count=4")
    assert [m[1] for m in p1.matches] == ["y0", "y1", "y2", "y3"]
    store.delete("Patient", "y1")                 # before the cursor
    store.put({"resourceType": "Patient", "id": "y10"})
    p2 = store.query("Patient", "_count=4", cursor=p1.next_cursor)
    assert [m[1] for m in p2.matches] == ["y4", "y5", "y6", "y7"]


def test_cursor_of_another_sort_is_rejected(world):
    page = world.query("Observation", "_count=1&_sort=date")
    with pytest.raises(BadRequest):
        world.query("Observation", "_count=1&_sort=-date", cursor=page.next_cursor)
    with pytest.raises(BadRequest):
        world.query("Observation", "_count=1", cursor="garbage!")


def test_total(world):
    assert world.query("Observation", "_count=1&_total=accurate").total == 3
    assert world.query("Observation", "_count=1&_total=none").total is None
    assert world.query("Observation", "_count=10").total == 3        # free when all fit
    page = world.query("Observation", "_summary=count")
    assert page.total == 3 and page.matches == []
    assert world.query("Observation", "_count=0&_total=accurate").total == 3


def test_compartment(world):
    assert world.idset("Observation", "", compartment=("Patient", "p1")) == {"o0", "o1"}
    assert world.idset("Observation", "code=8480-6", compartment=("Patient", "p1")) == {"o0"}
    assert world.idset("Patient", "", compartment=("Patient", "p1")) == {"p1"}
    q = world.search.parse(None, [("_type", "Observation,Appointment,Task,Organization")],
                           compartment=("Patient", "p2"))
    with world.db.connect() as conn:
        page = world.search.search(conn, None, q)
    # R4's Patient CompartmentDefinition lists no parameters for Task: never in the compartment
    assert {(t, i) for t, i, _ in page.matches} == {("Observation", "o2"), ("Appointment", "a2")}


def test_system_level_search(world):
    q = world.search.parse(None, [("_type", "Patient,Practitioner"), ("name", "house,alpha")])
    with world.db.connect() as conn:
        page = world.search.search(conn, None, q)
    assert {(t, i) for t, i, _ in page.matches} == {("Patient", "p1"), ("Practitioner", "dr")}


def test_find_for_conditional_operations(world):
    q = world.search.parse("Patient", [("identifier", "urn:mrn|2")], strict=True)
    with world.db.connect() as conn:
        found = world.search.find(conn, "Patient", q)
    assert [i for _, i in found] == ["p2"]
    assert isinstance(found[0][0], int)
    with world.db.connect() as conn:
        assert world.search.find(conn, "Patient", world.search.parse("Patient", []), limit=1)


def test_custom_search_parameter_takes_effect(engine):
    from .helpers import Store
    s = Store(engine, SearchEngine())
    s.search.registry.add({
        "resourceType": "SearchParameter", "url": "http://example.org/sp/patient-race", "code": "race",
        "base": ["Patient"], "type": "token",
        "expression": "Patient.extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race')"
                      ".extension('ombCategory').value"})
    s.put({"resourceType": "Patient", "id": "r", "extension": [{
        "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
        "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                             "code": "2106-3"}}]}]})
    assert s.idset("Patient", "race=2106-3") == {"r"}
    s.search.registry.remove("http://example.org/sp/patient-race")
    with pytest.raises(BadRequest):
        s.ids("Patient", "race=2106-3")


def test_result_params_parsed(world):
    q = world.search.parse("Observation", [("_count", "5"), ("_summary", "true"), ("_elements", "status,code"),
                                           ("_total", "accurate"), ("_sort", "-date,_id"),
                                           ("_include", "Observation:patient"),
                                           ("_revinclude:iterate", "Provenance:target")])
    assert q.count == 5 and q.summary == "true" and q.elements == ["status", "code"]
    assert [(k.code, k.desc) for k in q.sort] == [("date", True), ("_id", False)]
    assert q.includes[0].param == "patient" and q.revincludes[0].iterate


def test_apply_elements():
    body = {"resourceType": "Patient", "id": "x", "text": {"div": "<div/>"}, "name": [{"family": "A"}],
            "photo": [{"data": "AA=="}], "gender": "male"}
    s = apply_elements(body, "true", None)
    assert "photo" not in s and "text" not in s and s["name"] and s["meta"]["tag"][0]["code"] == "SUBSETTED"
    e = apply_elements(body, None, ["gender"])
    assert set(e) == {"resourceType", "id", "meta", "gender"}
    assert "text" not in apply_elements(body, "data", None)
    assert set(apply_elements(body, "text", None)) == {"resourceType", "id", "meta", "text"}


def test_text_search(store):
    store.put({"resourceType": "Patient", "id": "n", "text": {"status": "generated",
               "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Known <b>allergy</b> to Pénicillin</div>"}})
    assert store.idset("Patient", "_text=penicillin") == {"n"}
    assert store.idset("Patient", "_text=known") == {"n"}
    assert store.idset("Patient", "_text=icillin") == set()


def test_reindex_after_custom_parameter(engine):
    from .helpers import Store
    s = Store(engine, SearchEngine())
    s.put({"resourceType": "Patient", "id": "m", "maritalStatus": {"coding": [{"code": "M"}]}})
    s.search.registry.add({"url": "http://example.org/sp/marital", "code": "marital", "base": ["Patient"],
                           "type": "token", "expression": "Patient.maritalStatus"})
    assert s.idset("Patient", "marital=M") == set()          # written before the parameter existed
    with engine.begin() as conn:
        assert s.search.reindex(conn, ["Patient"]) == 1
    assert s.idset("Patient", "marital=M") == {"m"}
