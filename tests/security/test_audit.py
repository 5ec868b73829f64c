"""The audit trail (fhirgw.security.audit): event builders, AuditTrail, AuditRule, append-only.

The store tests run against a real Repository with the R4 search engine, on SQLite and
PostgreSQL (``db_url``), and find the events with ordinary AuditEvent searches.
"""
from __future__ import annotations

import base64
import threading
import time

import pytest

from fhirgw.model import resources as res
from fhirgw.model.errors import MethodNotAllowed, PreconditionFailed
from fhirgw.search import SearchEngine
from fhirgw.security.audit import (AuditRule, AuditTrail, check_append_only, current_interaction,
                                   denied_event, disclosure_event, install_rule, is_allowed,
                                   patients_of, reset_interaction, rest_event, set_interaction)
from fhirgw.security.principal import Principal, Scopes, current, reset_current, set_current
from fhirgw.store.repository import Repository, WriteRule

AUDIT_SD = "http://hl7.org/fhir/StructureDefinition/AuditEvent"

PARTNER = Principal("acme-client", "Acme Referrals", Scopes.parse("system/*.rs"),
                    organization="Organization/acme", purpose="TREAT", token_id="jti-123",
                    details={"address": "10.1.2.3"})
STAFF = Principal("ehr-client", "Clinic EHR", Scopes.parse("system/*.cruds"),
                  purpose="HOPERAT")


@pytest.fixture(scope="module")
def search_engine():
    return SearchEngine()


@pytest.fixture(scope="module")
def profile_validator():
    from fhirgw.validation import ProfileValidator

    return ProfileValidator(core_invariants=True)


@pytest.fixture
def repo(engine, search_engine):
    r = Repository(engine, search_engine)
    install_rule(r)
    return r


@pytest.fixture
def trail(repo):
    t = AuditTrail(repo, flush_interval=0.05, retry_delay=0.01)
    yield t
    t.close()


@pytest.fixture
def as_principal():
    tokens = []

    def use(principal):
        tokens.append(set_current(principal))
    yield use
    for t in reversed(tokens):
        reset_current(t)


def find(repo, **params) -> list[dict]:
    """AuditEvents matching ``params`` (a search, as a client would send it)."""
    items = [(k.replace("_", "-"), v) for k, v in params.items()]
    return [s.resource() for s in repo.run(lambda tx: tx.search("AuditEvent", items),
                                           write=False)]


def audit_events(repo) -> list[dict]:
    return [s.resource() for s in repo.run(lambda tx: tx.search("AuditEvent", []), write=False)]


def obs(patient="p1", **kw):
    return {"resourceType": "Observation", "status": "final", "code": {"text": "PHQ-9"},
            "subject": {"reference": f"Patient/{patient}"}, **kw}


# ---------------------------------------------------------------- builders

def _examples():
    return {
        "read by a partner": rest_event(PARTNER, "read", 200, resource_refs=["Observation/o1"],
                                        patient_refs={"Patient/p1"}),
        "search": rest_event(STAFF, "search-type", 200, query="Observation?code=44261-6",
                             patient_refs={"Patient/p1", "Patient/p2"}),
        "by the gateway": rest_event(None, "vread", 200,
                                     resource_refs=["Patient/p1/_history/2"]),
        "server error": rest_event(STAFF, "create", 500, description="database unavailable"),
        "401": denied_event(None, None, 401, address="::1", client_id="who-knows",
                            reason="no valid access token"),
        "403": denied_event(PARTNER, "read", 403, resource_refs=["Patient/p9"],
                            reason="scope does not allow Patient.r"),
        "disclosure": disclosure_event(None, "Organization/partner", 200,
                                       recipient_name="Partner Clinic", partner="partner",
                                       address="https://partner.example/fhir",
                                       resource_refs=["ServiceRequest/s1", "Patient/p1"],
                                       patient_refs={"Patient/p1"}, interaction="transaction"),
    }


@pytest.mark.parametrize("name", list(_examples()))
def test_builders_make_valid_r4_audit_events(name, profile_validator):
    event = _examples()[name]
    res.validate(event, "AuditEvent")                                # structure, data types
    issues = profile_validator.validate(event, [AUDIT_SD])           # R4 core + invariants
    assert [i.diagnostics for i in issues if i.severity in ("error", "fatal")] == []
    assert event["source"]["observer"] == {"display": "fhirgw"}
    assert event["recorded"].endswith("+00:00")
    assert all("requestor" in a for a in event["agent"])


def test_rest_event_fields():
    e = _examples()["read by a partner"]
    assert e["type"]["code"] == "rest" and e["subtype"][0]["code"] == "read"
    assert e["action"] == "R" and e["outcome"] == "0"
    (agent,) = e["agent"]
    assert agent["requestor"] is True
    assert agent["who"]["reference"] == "Organization/acme"
    assert agent["altId"] == "acme-client" and agent["name"] == "Acme Referrals"
    assert agent["policy"] == ["jti-123"]
    assert agent["network"] == {"address": "10.1.2.3", "type": "2"}
    assert agent["purposeOfUse"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
    roles = {x["what"]["reference"]: x["role"]["code"] for x in e["entity"]}
    assert roles == {"Observation/o1": "4", "Patient/p1": "1"}


def test_staff_client_has_no_organization_reference():
    e = rest_event(STAFF, "update", 200, resource_refs=["Goal/g1"])
    assert e["agent"][0]["who"] == {"display": "Clinic EHR"}
    assert e["action"] == "U"
    assert e["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "HOPERAT"


def test_search_event_carries_the_query_and_the_patients():
    e = _examples()["search"]
    assert e["action"] == "E" and e["subtype"][0]["code"] == "search-type"
    query = [x for x in e["entity"] if "query" in x]
    assert len(query) == 1 and query[0]["role"]["code"] == "24" and "name" not in query[0]
    assert base64.b64decode(query[0]["query"]).decode() == "Observation?code=44261-6"
    assert sorted(x["what"]["reference"] for x in e["entity"] if "what" in x) == \
        ["Patient/p1", "Patient/p2"]


def test_outcomes_and_actions():
    assert rest_event(STAFF, "delete", 204)["outcome"] == "0"
    assert rest_event(STAFF, "delete", 404)["outcome"] == "4"
    assert rest_event(STAFF, "delete", 503)["outcome"] == "8"
    assert rest_event(STAFF, "read", "8")["outcome"] == "8"
    assert [rest_event(STAFF, i, 200)["action"] for i in
            ("create", "read", "update", "patch", "delete", "transaction", "capabilities")] \
        == ["C", "R", "U", "U", "D", "E", "R"]
    with pytest.raises(ValueError):
        rest_event(STAFF, "frobnicate", 200)


def test_denied_events():
    e = _examples()["401"]
    (agent,) = e["agent"]
    assert agent["who"] == {"display": "unauthenticated client"}
    assert agent["altId"] == "who-knows" and agent["network"] == {"address": "::1", "type": "2"}
    assert e["outcome"] == "4" and e["outcomeDesc"] == "no valid access token"
    assert "subtype" not in e
    e = _examples()["403"]
    assert e["agent"][0]["altId"] == "acme-client" and e["subtype"][0]["code"] == "read"
    assert [x["what"]["reference"] for x in e["entity"]] == ["Patient/p9"]


def test_disclosure_event():
    e = _examples()["disclosure"]
    assert e["type"] == {"system": "http://dicom.nema.org/resources/ontology/DCM",
                         "code": "110106", "display": "Export"}
    assert e["action"] == "R" and e["subtype"][0]["code"] == "transaction"
    requestor, recipient = e["agent"]
    assert requestor["requestor"] is True and requestor["who"] == {"display": "fhirgw"}
    assert requestor["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    assert recipient["requestor"] is False
    assert recipient["who"]["reference"] == "Organization/partner"
    assert recipient["altId"] == "partner"
    assert recipient["network"] == {"address": "https://partner.example/fhir", "type": "5"}
    # the Patient sent is one entity, in its Patient role
    assert [(x["what"]["reference"], x["role"]["code"]) for x in e["entity"]] == \
        [("ServiceRequest/s1", "4"), ("Patient/p1", "1")]


def test_patients_of():
    assert patients_of({"resourceType": "Patient", "id": "p1"}) == {"Patient/p1"}
    assert patients_of(obs("p2")) == {"Patient/p2"}
    assert patients_of({"resourceType": "Task", "for": {"reference": "Patient/p3"},
                        "owner": {"reference": "Organization/o"}}) == {"Patient/p3"}
    assert patients_of({"resourceType": "Coverage",
                        "beneficiary": {"reference": "Patient/p4/_history/1"}}) == {"Patient/p4"}
    assert patients_of({"resourceType": "EpisodeOfCare",
                        "patient": {"reference": "Patient/p5"}}) == {"Patient/p5"}
    assert patients_of({"resourceType": "Appointment", "participant": [
        {"actor": {"reference": "Patient/p6"}},
        {"actor": {"reference": "Practitioner/x"}}]}) == {"Patient/p6"}
    assert patients_of({"resourceType": "Bundle", "type": "document", "entry": [
        {"resource": {"resourceType": "Composition", "subject": {"reference": "Patient/p7"}}},
        {"resource": {"resourceType": "Patient", "id": "p7"}}]}) == {"Patient/p7"}
    # not local, or not a patient: nothing
    assert patients_of({"resourceType": "Observation",
                        "subject": {"reference": "urn:uuid:0c5f1c6e-0000-4000-8000-0000000001"},
                        "performer": [{"reference": "Patient/p8"}]}) == set()
    assert patients_of({"resourceType": "Observation",
                        "subject": {"reference": "http://elsewhere/fhir/Patient/p9"}}) == set()
    assert patients_of({"resourceType": "Organization", "id": "o"}) == set()
    assert patients_of(b'{"resourceType":"Goal","subject":{"reference":"Patient/p0"}}') == \
        {"Patient/p0"}
    assert patients_of(None) == set() and patients_of(b"not json") == set()


def test_builders_are_cheap():
    start = time.perf_counter()
    for _ in range(2000):
        rest_event(PARTNER, "read", 200, resource_refs=["Observation/o1"],
                   patient_refs=patients_of(obs()))
    per_event = (time.perf_counter() - start) / 2000
    assert per_event < 100e-6, f"{per_event * 1e6:.1f} µs per read event"


# ---------------------------------------------------------------- append-only

def test_append_only_check():
    for interaction in ("update", "patch", "delete"):
        assert not is_allowed("AuditEvent", interaction)
        with pytest.raises(MethodNotAllowed) as err:
            check_append_only("AuditEvent", interaction)
        assert err.value.status == 405 and err.value.headers == {"Allow": "GET"}
        assert err.value.outcome()["issue"][0]["code"] == "not-supported"
    with pytest.raises(MethodNotAllowed) as err:
        check_append_only("AuditEvent", "delete", instance=False)   # DELETE AuditEvent?...
    assert err.value.headers == {"Allow": "GET, POST"}
    for interaction in ("create", "read", "search-type", "history-instance"):
        check_append_only("AuditEvent", interaction)
    check_append_only("Patient", "delete")


def test_rule_refuses_changes_to_stored_audit_events(repo):
    event = rest_event(STAFF, "read", 200, resource_refs=["Patient/p1"])
    sid = repo.run(lambda tx: tx.create("AuditEvent", event)).stored.res_id
    stored = repo.read("AuditEvent", sid)
    body = stored.resource()
    with pytest.raises(MethodNotAllowed):
        repo.run(lambda tx: tx.update("AuditEvent", sid, {**body, "outcome": "8"}))
    with pytest.raises(MethodNotAllowed):
        repo.run(lambda tx: tx.patch("AuditEvent", sid, [
            {"op": "replace", "path": "/outcome", "value": "8"}]))
    with pytest.raises(MethodNotAllowed):
        repo.run(lambda tx: tx.delete("AuditEvent", sid))
    with pytest.raises(MethodNotAllowed):
        repo.run(lambda tx: tx.conditional_delete("AuditEvent", [("_id", sid)]))
    after = repo.read("AuditEvent", sid)
    assert after.version == 1 and after.resource()["outcome"] == "0"
    # a posted AuditEvent is a unit of only AuditEvents: it is not audited itself
    assert len(audit_events(repo)) == 1


# ---------------------------------------------------------------- AuditRule

def test_rule_writes_one_event_per_unit_of_work(repo, as_principal):
    as_principal(STAFF)
    token = set_interaction("transaction")
    try:
        def unit(tx):
            p = tx.create("Patient", {"resourceType": "Patient", "active": True}).stored
            o = tx.create("Observation", obs(p.res_id)).stored
            g = tx.create("Goal", {"resourceType": "Goal", "lifecycleStatus": "active",
                                   "description": {"text": "sleep"},
                                   "subject": {"reference": f"Patient/{p.res_id}"}}).stored
            return p, o, g
        p, o, g = repo.run(unit)
    finally:
        reset_interaction(token)
    (event,) = audit_events(repo)
    assert event["action"] == "C" and event["subtype"][0]["code"] == "transaction"
    assert event["outcome"] == "0" and event["agent"][0]["altId"] == "ehr-client"
    entities = {x["what"]["reference"]: x for x in event["entity"]}
    assert set(entities) == {f"Patient/{p.res_id}/_history/1",
                             f"Observation/{o.res_id}/_history/1",
                             f"Goal/{g.res_id}/_history/1"}
    assert entities[f"Patient/{p.res_id}/_history/1"]["role"]["code"] == "1"
    assert entities[f"Goal/{g.res_id}/_history/1"]["lifecycle"]["code"] == "1"
    # the event was written in the same transaction: same history, searchable at once
    assert [e["id"] for e in find(repo, patient=f"Patient/{p.res_id}")] == [event["id"]]
    assert [e["id"] for e in find(repo, entity=f"Observation/{o.res_id}")] == [event["id"]]
    assert [e["id"] for e in find(repo, action="C", altid="ehr-client")] == [event["id"]]


def test_rule_update_delete_and_mixed_units(repo, as_principal):
    as_principal(PARTNER)
    o = repo.run(lambda tx: tx.create("Observation", obs("p1"))).stored
    body = o.resource()
    repo.run(lambda tx: tx.update("Observation", o.res_id, {**body, "status": "amended"}))
    repo.run(lambda tx: tx.delete("Observation", o.res_id))

    def mixed(tx):
        tx.create("Observation", obs("p2"))
        tx.create("Observation", obs("p3"))
    repo.run(mixed)
    events = sorted(audit_events(repo), key=lambda e: e["recorded"])
    assert [e["action"] for e in events] == ["C", "U", "D", "C"]
    assert all(e["subtype"][0]["code"] == "operation" for e in events)  # router did not say
    deleted = events[2]
    # whom the deleted resource concerned is read from the version before the deletion
    assert {x["what"]["reference"] for x in deleted["entity"]} == \
        {f"Observation/{o.res_id}/_history/3", "Patient/p1"}
    assert [x["lifecycle"]["code"] for x in deleted["entity"] if "lifecycle" in x] == ["14"]
    assert len(find(repo, patient="Patient/p1")) == 3
    assert len(find(repo, agent="Organization/acme")) == 4

    def update_and_create(tx):
        tx.create("Observation", obs("p4"))
        cur = tx.read("Observation", events[3]["entity"][0]["what"]["reference"].split("/")[1])
        tx.update("Observation", cur.res_id, {**cur.resource(), "status": "amended"})
    repo.run(update_and_create)
    (last,) = find(repo, patient="Patient/p4")
    assert last["action"] == "E"
    assert sorted(x["lifecycle"]["code"] for x in last["entity"] if "lifecycle" in x) == \
        ["1", "3"]


def test_failed_write_leaves_no_audit_event(repo, as_principal):
    as_principal(STAFF)

    def unit(tx):
        tx.create("Observation", obs())
        raise PreconditionFailed("boom")
    with pytest.raises(PreconditionFailed):
        repo.run(unit)

    class FailsAtCommit(WriteRule):
        def before_commit(self, tx):
            assert any(s.res_type == "AuditEvent" for s in tx.written)  # rule already ran
            raise PreconditionFailed("refused at the end of the unit")
    repo.rules.append(FailsAtCommit())
    with pytest.raises(PreconditionFailed):
        repo.run(lambda tx: tx.create("Observation", obs()))
    assert repo.run(lambda tx: tx.history()).total == 0


def test_no_event_for_audit_event_only_units(repo):
    repo.run(lambda tx: tx.create_many([
        ("AuditEvent", rest_event(None, "read", 200), f"a-{i}") for i in range(3)]))
    assert len(audit_events(repo)) == 3
    assert repo.run(lambda tx: tx.history()).total == 3


def test_install_rule_keeps_one_rule_last(repo):
    class Other(WriteRule):
        pass
    repo.rules.append(Other())
    rule = install_rule(repo)
    assert repo.rules[-1] is rule
    assert sum(isinstance(r, AuditRule) for r in repo.rules) == 1


def test_interaction_context():
    assert current_interaction() == "operation"
    token = set_interaction("patch")
    assert current_interaction() == "patch"
    reset_interaction(token)
    assert current_interaction() == "operation"
    with pytest.raises(ValueError):
        set_interaction("PATCH")


# ---------------------------------------------------------------- AuditTrail

def test_trail_writes_batches_searchable_by_patient_and_agent(repo, engine, search_engine):
    units = []
    counting = Repository(engine, search_engine)
    counting.rules = repo.rules
    real_run = counting.run

    def run(fn, write=True):
        units.append(1)
        return real_run(fn, write)
    counting.run = run
    t = AuditTrail(counting, flush_interval=5, max_batch=50, retry_delay=0.01)
    try:
        for i in range(110):
            t.record(rest_event(PARTNER if i % 2 else STAFF, "read", 200,
                                resource_refs=[f"Observation/o{i}"],
                                patient_refs={f"Patient/p{i % 10}"}))
        t.record(denied_event(PARTNER, "read", 403, resource_refs=["Patient/secret"]))
        assert t.flush(10)
    finally:
        t.close()
    assert t.written == 111 and t.lost == 0 and t.pending == 0
    assert len(units) == 3          # 50 + 50 + 11, one unit of work each
    assert len(find(repo, patient="Patient/p3")) == 11
    assert len(find(repo, agent="Organization/acme")) == 56
    assert len(find(repo, altid="ehr-client")) == 55
    assert len(find(repo, agent_name="Acme Referrals")) == 56
    assert len(find(repo, subtype="read", patient="Patient/p0")) == 11
    denied = find(repo, outcome="4")
    assert len(denied) == 1 and denied[0]["entity"][0]["what"]["reference"] == "Patient/secret"
    assert len(find(repo, subtype="http://hl7.org/fhir/restful-interaction|read",
                    entity="Observation/o7")) == 1
    assert len(find(repo, type="http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
                    patient="Patient/p1")) == 11


def test_trail_flushes_by_interval(trail, repo):
    trail.record(rest_event(STAFF, "read", 200, patient_refs={"Patient/x"}))
    deadline = time.monotonic() + 5
    while trail.written == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert trail.written == 1 and len(find(repo, patient="Patient/x")) == 1


def test_trail_close_drains_then_drops(repo):
    t = AuditTrail(repo, flush_interval=60, max_batch=1000)
    for i in range(30):
        t.record(rest_event(STAFF, "read", 200, resource_refs=[f"Goal/g{i}"]))
    assert t.close(10)                  # does not wait for the 60 s interval
    assert t.written == 30 and len(audit_events(repo)) == 30
    t.record(rest_event(STAFF, "read", 200))   # after close: counted, not raised
    assert t.dropped == 1 and t.pending == 0
    assert t.close() and t.flush(0.1)   # idempotent; nothing left to wait for


def test_trail_never_raises_and_bounds_its_queue(repo):
    t = AuditTrail(repo, flush_interval=60, max_batch=1000, max_queue=5)
    try:
        for _ in range(8):
            t.record(rest_event(STAFF, "read", 200))
        assert t.pending == 5 and t.dropped == 3
    finally:
        t.close()
    assert t.written == 5


class FlakyRepo:
    """A repository stand-in whose unit of work fails ``failures`` times first."""

    def __init__(self, repo, failures):
        self.repo = repo
        self.failures = failures
        self.calls = 0

    def run(self, fn, write=True):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database went away")
        return self.repo.run(fn, write)


def _reads_through(repo_like, n: int, flush_interval: float = 0.05) -> AuditTrail:
    """A trail over ``repo_like`` that recorded ``n`` read events, flushed and closed."""
    t = AuditTrail(repo_like, flush_interval=flush_interval, retry_delay=0.01)
    try:
        for _ in range(n):
            t.record(rest_event(STAFF, "read", 200))
        assert t.flush(5)
    finally:
        t.close()
    return t


def test_failed_batch_is_retried_once(repo):
    flaky = FlakyRepo(repo, failures=1)
    t = _reads_through(flaky, 3)
    assert flaky.calls == 2 and t.written == 3 and t.lost == 0
    assert len(audit_events(repo)) == 3


def test_a_lost_batch_does_not_stop_the_writer(repo, caplog):
    flaky = FlakyRepo(repo, failures=2)
    t = AuditTrail(flaky, flush_interval=0.05, retry_delay=0.01)
    try:
        t.record(rest_event(STAFF, "read", 200, patient_refs={"Patient/lost"}))
        assert t.flush(5)
        assert t.lost == 1 and t._thread.is_alive()
        t.record(rest_event(STAFF, "read", 200, patient_refs={"Patient/kept"}))
        assert t.flush(5)
    finally:
        t.close()
    assert t.written == 1
    assert find(repo, patient="Patient/kept") and not find(repo, patient="Patient/lost")
    assert "lost" in caplog.text and "Patient/lost" not in caplog.text


def test_a_bad_event_in_a_batch_is_contained(repo):
    """An event the store cannot take fails its batch (twice), not the thread."""
    t = AuditTrail(repo, flush_interval=0.05, retry_delay=0.01)
    try:
        t.record({"resourceType": "AuditEvent", "recorded": object()})  # not serializable
        assert t.flush(5) and t.lost == 1
        t.record(rest_event(STAFF, "read", 200))
        assert t.flush(5) and t.written == 1
    finally:
        t.close()


def test_record_from_many_threads(trail, repo):
    def worker(n):
        for i in range(50):
            trail.record(rest_event(STAFF, "read", 200, resource_refs=[f"Goal/t{n}-{i}"]))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert trail.flush(10)
    assert trail.written == 400 and len(find(repo, altid="ehr-client")) == 400


def test_trail_and_rule_together(repo, trail, as_principal):
    """A read recorded through the trail and a write audited by the rule, for one patient."""
    as_principal(PARTNER)
    o = repo.run(lambda tx: tx.create("Observation", obs("p42"))).stored
    trail.record(rest_event(current(), "read", 200, resource_refs=[o.ref],
                            patient_refs=patients_of(o.body)))
    assert trail.flush(5)
    events = find(repo, patient="Patient/p42")
    assert sorted(e["action"] for e in events) == ["C", "R"]
    assert all(e["agent"][0]["who"]["reference"] == "Organization/acme" for e in events)


def test_a_trail_that_falls_behind_slows_callers_instead_of_dropping(db_url):
    """Backpressure: with the writer stalled, record() waits (up to max_wait) once
    high_water events are queued, and nothing is dropped."""
    import threading
    import time as _time

    from fhirgw.search import SearchEngine
    from fhirgw.security.audit import AuditTrail, rest_event
    from fhirgw.store.db import make_engine, migrate
    from fhirgw.store.repository import Repository

    eng = make_engine(db_url)
    migrate(eng)
    repo = Repository(eng, SearchEngine())
    gate = threading.Event()
    real_run = repo.run

    def slow_run(fn, write=True):
        gate.wait(5)
        return real_run(fn, write)

    repo.run = slow_run
    trail = AuditTrail(repo, max_batch=5, high_water=10, max_wait=0.3, flush_interval=0.01)
    try:
        event = rest_event(None, "read", 200, resource_refs=("Patient/1",))
        for _ in range(15):
            trail.record(event)
        _time.sleep(0.2)                    # the writer took a batch of 5 and is stalled
        assert trail.pending == 10
        started = _time.monotonic()
        trail.record(event)                 # the 16th waits for the stalled writer
        assert _time.monotonic() - started >= 0.25
        assert trail.congested
        gate.set()
        assert trail.flush(10)
        assert trail.dropped == 0 and trail.written == 16
        assert not trail.congested
    finally:
        gate.set()
        trail.close()
        eng.dispose()


def test_one_bad_event_costs_only_itself(repo):
    """A batch that fails twice is stored event by event: the good ones are kept."""
    t = AuditTrail(repo, flush_interval=0.5, retry_delay=0.01)
    try:
        t.record(rest_event(STAFF, "read", 200, patient_refs={"Patient/before"}))
        t.record({"resourceType": "AuditEvent", "recorded": object()})  # not serializable
        t.record(rest_event(STAFF, "read", 200, patient_refs={"Patient/after"}))
        assert t.flush(5)
    finally:
        t.close()
    assert t.lost == 1 and t.written == 2
    assert find(repo, patient="Patient/before") and find(repo, patient="Patient/after")


def test_a_failing_database_loses_the_batch_without_trying_every_event(repo):
    flaky = FlakyRepo(repo, failures=10_000)
    t = _reads_through(flaky, 50, flush_interval=0.5)
    # two tries of the batch, then one by one until 3 fail in a row
    assert t.lost == 50 and t.written == 0 and flaky.calls == 2 + AuditTrail.ONE_BY_ONE_GIVE_UP
