"""Authorization matrix: each kind of client x each interaction, allowed or denied, over real
HTTP (uvicorn on 127.0.0.1) with tokens from the gateway's own token endpoint.

Runs on SQLite and on PostgreSQL (the partner view's constraints are SQL).

Kinds: an admin, a reader (v2 ``system/*.rs``), a v1 reader (``system/*.read``), a
type-limited writer (``system/Patient.cru``), a partner bound to an Organization (with
``system/*.cruds``: isolation wins over scopes), a revoked client, and no token at all.
"""
from __future__ import annotations

import httpx
import pytest

from tests.auth import grant, token_for
from tests.integration.conftest import bind_free_port, live_db_url, start_server  # noqa: F401

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
KINDS = ("admin", "reader", "v1reader", "patientwriter", "partner", "revoked", "anonymous")
SCOPES = {
    "admin": "system/*.cruds fhirgw/admin",
    "reader": "system/*.rs",
    "v1reader": "system/*.read",
    "patientwriter": "system/Patient.cru",
    "partner": "system/*.cruds",
    "revoked": "system/*.cruds",
}


class World:
    def __init__(self, base: str, app) -> None:
        self.base = base
        self.app = app
        self.http = httpx.Client(timeout=30)
        self.tokens: dict[str, str | None] = {"anonymous": None}
        self.ids: dict[str, str] = {}

    def token(self, client_id: str, secret: str) -> str:
        return token_for(self.base, client_id, secret)

    def call(self, kind: str, method: str, path: str, body=None, headers=None):
        h = {"Accept": "application/fhir+json", **(headers or {})}
        if self.tokens[kind]:
            h["Authorization"] = f"Bearer {self.tokens[kind]}"
        if body is not None:
            h.setdefault("Content-Type", "application/json-patch+json" if method == "PATCH"
                         else "application/fhir+json")
        return self.http.request(method, f"{self.base}/{path}", json=body, headers=h)


@pytest.fixture(scope="module")
def world(live_db_url):
    """One gateway per database (SQLite, PostgreSQL) with the clients and data below."""
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    sock = bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    app = create_app(Settings(database_url=live_db_url, base_url=base, worker=False))
    stop = start_server(app, sock)
    w = World(base, app)
    for kind, scope in SCOPES.items():
        org = "Organization/partner-org" if kind == "partner" else None
        client_id, secret = grant(app, scope, org, name=f"{kind}-client")
        w.ids[kind] = client_id
        w.tokens[kind] = w.token(client_id, secret)
    app.state.auth.clients.revoke(w.ids["revoked"])

    # the data, written by the admin
    def put(path, body):
        r = w.call("admin", "PUT", path, body)
        assert r.status_code in (200, 201), r.text

    put("Organization/partner-org", {"resourceType": "Organization", "id": "partner-org",
                                     "name": "Partner psychiatry"})
    put("Organization/other-org", {"resourceType": "Organization", "id": "other-org",
                                   "name": "Another practice"})
    for pid in ("p1", "p2", "scratch"):
        put(f"Patient/{pid}", {"resourceType": "Patient", "id": pid,
                               "name": [{"family": pid.upper(), "given": ["Test"]}],
                               "birthDate": "1990-01-01", "maritalStatus": {"text": "single"},
                               "contact": [{"name": {"family": "Family"}}]})
    put("Condition/c1", {"resourceType": "Condition", "id": "c1",
                         "subject": {"reference": "Patient/p1"},
                         "code": {"coding": [{"system": ICD10, "code": "F33.1"}]}})
    for sr, pid in (("sr1", "p1"), ("sr2", "p2")):
        put(f"ServiceRequest/{sr}", {"resourceType": "ServiceRequest", "id": sr,
                                     "status": "active", "intent": "order",
                                     "subject": {"reference": f"Patient/{pid}"},
                                     "code": {"text": "psychiatry referral"}})
    for task, sr, pid, org in (("t1", "sr1", "p1", "partner-org"),
                               ("t2", "sr2", "p2", "other-org")):
        put(f"Task/{task}", {"resourceType": "Task", "id": task, "status": "requested",
                             "intent": "order", "focus": {"reference": f"ServiceRequest/{sr}"},
                             "for": {"reference": f"Patient/{pid}"},
                             "owner": {"reference": f"Organization/{org}"}})
    try:
        yield w
    finally:
        w.http.close()
        stop()
        app.state.router.repo.engine.dispose()


def _patient(pid="new"):
    return {"resourceType": "Patient", "name": [{"family": "New"}], "birthDate": "2000-01-01"}


def _tx(kind):
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}}]}


# interaction -> (method, path, body); then the expected status per kind
INTERACTIONS = {
    "read-patient": ("GET", "Patient/p1", None),
    "read-other-patient": ("GET", "Patient/p2", None),
    "read-condition": ("GET", "Condition/c1", None),
    "read-own-task": ("GET", "Task/t1", None),
    "read-other-task": ("GET", "Task/t2", None),
    "vread-patient": ("GET", "Patient/p1/_history/1", None),
    "search-patient": ("GET", "Patient?birthdate=1990-01-01", None),
    "search-condition": ("GET", "Condition?subject=Patient/p1", None),
    "search-system": ("GET", "?_type=Patient", None),
    "history-patient": ("GET", "Patient/p1/_history", None),
    "create-patient": ("POST", "Patient", _patient()),
    "create-condition": ("POST", "Condition", {
        "resourceType": "Condition", "subject": {"reference": "Patient/p1"},
        "code": {"text": "insomnia"}}),
    "update-patient": ("PUT", "Patient/p1", {
        "resourceType": "Patient", "id": "p1", "name": [{"family": "P1", "given": ["Test"]}],
        "birthDate": "1990-01-01", "contact": [{"name": {"family": "Family"}}]}),
    "patch-patient": ("PATCH", "Patient/p1", [{"op": "replace", "path": "/birthDate",
                                                "value": "1990-01-01"}]),
    "delete-patient": ("DELETE", "Patient/scratch", None),
    "transaction-create": ("POST", "", _tx("transaction")),
    "reindex": ("POST", "Patient/$reindex", None),
    "metadata": ("GET", "metadata", None),
}

A, R, V, W, P, X, N = KINDS
# expected status for (admin, reader, v1reader, patientwriter, partner, revoked, anonymous)
EXPECTED = {
    "read-patient":        (200, 200, 200, 200, 200, 401, 401),
    "read-other-patient":  (200, 200, 200, 200, 404, 401, 401),
    "read-condition":      (200, 200, 200, 403, 403, 401, 401),
    "read-own-task":       (200, 200, 200, 403, 200, 401, 401),
    "read-other-task":     (200, 200, 200, 403, 404, 401, 401),
    "vread-patient":       (200, 200, 200, 200, 403, 401, 401),
    "search-patient":      (200, 200, 200, 403, 200, 401, 401),
    "search-condition":    (200, 200, 200, 403, 403, 401, 401),
    "search-system":       (200, 200, 200, 403, 403, 401, 401),
    "history-patient":     (200, 200, 200, 200, 403, 401, 401),
    "create-patient":      (201, 403, 403, 201, 403, 401, 401),
    "create-condition":    (201, 403, 403, 403, 403, 401, 401),
    "update-patient":      (200, 403, 403, 200, 403, 401, 401),
    "patch-patient":       (200, 403, 403, 200, 403, 401, 401),
    "delete-patient":      (204, 403, 403, 403, 403, 401, 401),
    "transaction-create":  (200, 403, 403, 200, 403, 401, 401),
    "reindex":             (202, 403, 403, 403, 403, 401, 401),
    "metadata":            (200, 200, 200, 200, 200, 200, 200),
}
CASES = [(i, k) for i in INTERACTIONS for k in KINDS]


@pytest.mark.parametrize("interaction,kind", CASES, ids=[f"{i}-{k}" for i, k in CASES])
def test_matrix(world, interaction, kind):
    method, path, body = INTERACTIONS[interaction]
    expected = EXPECTED[interaction][KINDS.index(kind)]
    r = world.call(kind, method, path, body)
    assert r.status_code == expected, (interaction, kind, r.text[:400])
    if expected >= 400:
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] in ("login", "forbidden", "not-found",
                                               "not-supported")
    if expected == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_partner_sees_minimum_necessary_patient(world):
    r = world.call("partner", "GET", "Patient/p1")
    body = r.json()
    assert body["name"][0]["family"] == "P1"
    assert "maritalStatus" not in body and "contact" not in body
    assert any(t["code"] == "SUBSETTED" for t in body["meta"]["tag"])
    full = world.call("admin", "GET", "Patient/p1").json()
    assert "contact" in full


def test_partner_searches_are_narrowed(world):
    tasks = world.call("partner", "GET", "Task").json()
    assert [e["resource"]["id"] for e in tasks.get("entry", [])] == ["t1"]
    srs = world.call("partner", "GET", "ServiceRequest").json()
    assert [e["resource"]["id"] for e in srs.get("entry", [])] == ["sr1"]
    pats = world.call("partner", "GET", "Patient").json()
    assert [e["resource"]["id"] for e in pats.get("entry", [])] == ["p1"]
    assert "contact" not in pats["entry"][0]["resource"]
    orgs = world.call("partner", "GET", "Organization").json()
    assert [e["resource"]["id"] for e in orgs.get("entry", [])] == ["partner-org"]


def test_partner_cannot_probe_with_has_or_chains(world):
    r = world.call("partner", "GET",
                   "Patient?_has:Condition:subject:code=F33.1")
    assert r.status_code == 403
    r = world.call("partner", "GET", "Task?focus.code:text=psychiatry")
    assert r.status_code == 403


def test_partner_includes_outside_its_view_are_dropped(world):
    r = world.call("partner", "GET", "Task?_include=Task:patient&_include=Task:focus")
    assert r.status_code == 200
    got = sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}"
                 for e in r.json()["entry"])
    assert got == ["Patient/p1", "ServiceRequest/sr1", "Task/t1"]
    # the reader sees everything it asks for; a type-limited client loses included types
    # it may not read
    r = world.call("reader", "GET", "Task?_include=Task:patient")
    assert {e["resource"]["resourceType"] for e in r.json()["entry"]} == {"Task", "Patient"}


def test_include_needs_read_scope_of_the_included_type(world):
    world.tokens["task-only"] = world.token(*grant(world.app, "system/Task.rs"))
    r = world.call("task-only", "GET", "Task?_include=Task:patient")
    assert r.status_code == 200
    types = [e["resource"]["resourceType"] for e in r.json()["entry"]]
    assert "Patient" not in types and "Task" in types
    assert any(t == "OperationOutcome" for t in types)  # says something was left out


def test_partner_moves_its_task_through_partner_statuses_only(world):
    task = world.call("partner", "GET", "Task/t1").json()
    accepted = {**task, "status": "accepted"}
    accepted.pop("meta", None)
    r = world.call("partner", "PUT", "Task/t1", accepted)
    assert r.status_code == 200, r.text
    cancelled = {**accepted, "status": "cancelled"}
    r = world.call("partner", "PUT", "Task/t1", cancelled)
    assert r.status_code == 403 and "Task.status" in r.text
    stolen = {**accepted, "owner": {"reference": "Organization/other-org"}}
    r = world.call("partner", "PUT", "Task/t1", stolen)
    assert r.status_code == 403 and "Task.owner" in r.text
    other = world.call("admin", "GET", "Task/t2").json()
    other.pop("meta", None)
    r = world.call("partner", "PUT", "Task/t2", {**other, "status": "accepted"})
    assert r.status_code == 404
    assert world.call("admin", "GET", "Task/t2").json()["status"] == "requested"


def test_batch_entries_are_checked_one_by_one(world):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/p1"}},
        {"request": {"method": "GET", "url": "Condition/c1"}},
        {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = world.call("reader", "POST", "", bundle)
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert [s.split()[0] for s in statuses] == ["200", "200", "403"]
    r = world.call("patientwriter", "POST", "", bundle)
    statuses = [e["response"]["status"].split()[0] for e in r.json()["entry"]]
    assert statuses == ["200", "403", "201"]


def test_transaction_denied_entry_rolls_back_everything(world):
    before = world.call("admin", "GET", "Patient?_summary=count").json()["total"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                      "code": {"text": "x"}},
         "request": {"method": "POST", "url": "Condition"}},
    ]}
    r = world.call("patientwriter", "POST", "", bundle)
    assert r.status_code == 403
    assert "Bundle.entry[1]" in r.text
    after = world.call("admin", "GET", "Patient?_summary=count").json()["total"]
    assert after == before


def _audit(world, query):
    world.app.state.audit.flush()
    r = world.call("admin", "GET", f"AuditEvent?{query}&_count=200")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])
            if e["resource"]["resourceType"] == "AuditEvent"]


def test_reads_searches_writes_and_refusals_are_audited(world):
    reader_id = world.ids["reader"]
    assert world.call("reader", "GET", "Condition/c1").status_code == 200
    assert world.call("reader", "GET", "Condition?subject=Patient/p1").status_code == 200
    assert world.call("reader", "DELETE", "Condition/c1").status_code == 403
    events = _audit(world, f"altid={reader_id}")
    subtypes = {e["subtype"][0]["code"]: e for e in events}
    assert {"read", "search-type", "delete"} <= set(subtypes)
    assert subtypes["read"]["outcome"] == "0"
    assert subtypes["delete"]["outcome"] == "4"
    assert subtypes["read"]["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    # the read and the search are about Patient/p1: found by patient
    about_p1 = _audit(world, "patient=Patient/p1")
    assert any(e["agent"][0].get("altId") == reader_id for e in about_p1)

    # a write is audited in its own transaction, with the new version
    r = world.call("admin", "POST", "Condition", {
        "resourceType": "Condition", "subject": {"reference": "Patient/p2"},
        "code": {"text": "audited"}})
    cid = r.json()["id"]
    written = _audit(world, f"entity=Condition/{cid}")
    assert written and written[0]["action"] == "C"

    # no token at all: audited as an unauthenticated client
    assert world.call("anonymous", "GET", "Patient/p1").status_code == 401
    assert _audit(world, "agent-name=unauthenticated client&outcome=4")


def test_partner_requests_are_audited_under_its_organization(world):
    assert world.call("partner", "GET", "Task/t1").status_code == 200
    events = _audit(world, "agent=Organization/partner-org")
    assert any(e["subtype"][0]["code"] == "read" for e in events)


def test_audit_records_are_append_only(world):
    event = _audit(world, "subtype=read")[0]
    for method, body in (("PUT", event), ("DELETE", None),
                         ("PATCH", [{"op": "remove", "path": "/agent"}])):
        r = world.call("admin", method, f"AuditEvent/{event['id']}", body)
        assert r.status_code == 405, (method, r.text)
    r = world.call("admin", "DELETE", "AuditEvent?subtype=read")
    assert r.status_code == 405
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"AuditEvent/{event['id']}"}}]}
    assert world.call("admin", "POST", "", bundle).status_code == 405
    assert world.call("admin", "GET", f"AuditEvent/{event['id']}").status_code == 200


def test_partner_reads_part2_data_only_with_the_clients_consent(world):
    def put(path, body):
        r = world.call("admin", "PUT", path, body)
        assert r.status_code in (200, 201), r.text
        return r.json()

    put("Patient/p9", {"resourceType": "Patient", "id": "p9", "name": [{"family": "Nine"}]})
    sr = put("ServiceRequest/sr9", {
        "resourceType": "ServiceRequest", "id": "sr9", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/p9"},
        "reasonCode": [{"coding": [{"system": ICD10, "code": "F11.20"}]}]})
    assert any(t["code"] == "42CFRPart2" for t in sr["meta"]["security"])
    put("Task/t9", {"resourceType": "Task", "id": "t9", "status": "requested",
                    "intent": "order", "focus": {"reference": "ServiceRequest/sr9"},
                    "for": {"reference": "Patient/p9"},
                    "owner": {"reference": "Organization/partner-org"}})
    # no consent: the SUD referral does not exist for the partner, by read or by search
    assert world.call("partner", "GET", "ServiceRequest/sr9").status_code == 404
    found = world.call("partner", "GET", "ServiceRequest?_id=sr9").json()
    assert not [e for e in found.get("entry", [])
                if e["resource"]["resourceType"] == "ServiceRequest"]
    assert world.call("reader", "GET", "ServiceRequest/sr9").status_code == 200  # internal
    consent = {"resourceType": "Consent", "id": "consent9", "status": "active",
               "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                               "consentscope", "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
               "patient": {"reference": "Patient/p9"},
               "provision": {"type": "permit",
                             "actor": [{"role": {"coding": [{
                                 "system": "http://terminology.hl7.org/CodeSystem/"
                                           "v3-ParticipationType", "code": "IRCP"}]},
                                 "reference": {"reference": "Organization/partner-org"}}],
                             "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                    "v3-ActReason", "code": "TREAT"}]}}
    put("Consent/consent9", consent)
    assert world.call("partner", "GET", "ServiceRequest/sr9").status_code == 200
    put("Consent/consent9", {**consent, "status": "inactive"})  # revoked: at once
    assert world.call("partner", "GET", "ServiceRequest/sr9").status_code == 404


def test_a_document_for_a_recipient_is_audited_as_a_disclosure(world):
    r = world.call("admin", "PUT", "Composition/doc1", {
        "resourceType": "Composition", "id": "doc1", "status": "final",
        "type": {"text": "Discharge summary"}, "date": "2026-04-01",
        "subject": {"reference": "Patient/p2"}, "author": [{"display": "IOP"}],
        "title": "Discharge summary",
        "section": [{"title": "Plan", "text": {"status": "generated",
                                               "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">ok</div>"}}]})
    assert r.status_code in (200, 201), r.text
    r = world.call("admin", "GET", "Composition/doc1/$document?recipient=Organization/other-org")
    assert r.status_code == 200, r.text
    events = _audit(world, "type=http://dicom.nema.org/resources/ontology/DCM|110106")
    assert any(a.get("who", {}).get("reference") == "Organization/other-org"
               for e in events for a in e["agent"])


def test_partner_reads_messages_addressed_to_it_only(world):
    r = world.call("admin", "PUT", "Patient/p7", {
        "resourceType": "Patient", "id": "p7", "name": [{"family": "Seven"}],
        "identifier": [{"system": "urn:iop:mrn", "value": "MRN-7"}],
        "birthDate": "1980-01-01", "telecom": [{"system": "phone", "value": "+1-555-0107"}]})
    assert r.status_code in (200, 201), r.text
    r = world.call("admin", "POST", "MedicationRequest", {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/p7"},
        "medicationCodeableConcept": {"text": "sertraline 50 mg"}})
    assert r.status_code == 201, r.text
    ids = {}
    for org in ("partner-org", "other-org"):
        r = world.call("admin", "POST", "Patient/p7/$medication-handoff", {
            "resourceType": "Parameters", "parameter": [
                {"name": "recipient", "valueReference": {"reference": f"Organization/{org}"}}]})
        assert r.status_code == 200, r.text
        ids[org] = r.json()["id"]
    assert world.call("partner", "GET", f"Bundle/{ids['partner-org']}").status_code == 200
    assert world.call("partner", "GET", f"Bundle/{ids['other-org']}").status_code == 404
    found = world.call("partner", "GET", "Bundle?_count=100").json()
    got = {e["resource"]["id"] for e in found.get("entry", [])
           if e["resource"]["resourceType"] == "Bundle"}
    assert ids["partner-org"] in got and ids["other-org"] not in got


def test_refused_token_requests_are_audited(world):
    origin = world.base[: -len("/fhir")]
    r = world.http.post(f"{origin}/auth/token", data={"grant_type": "client_credentials"},
                        auth=(world.ids["reader"], "not-the-secret"))
    assert r.status_code == 401
    events = _audit(world, f"altid={world.ids['reader']}&outcome=4")
    assert any("token endpoint" in (e.get("outcomeDesc") or "") for e in events)


def test_partner_searches_carry_no_total(world):
    """A count taken before the Part 2 filter could reveal withheld referrals."""
    for query in ("ServiceRequest?_summary=count", "ServiceRequest?_total=accurate",
                  "Bundle?_total=accurate"):
        r = world.call("partner", "GET", query)
        assert r.status_code == 200
        assert "total" not in r.json(), query
    assert "total" in world.call("reader", "GET", "ServiceRequest?_total=accurate").json()


def test_a_partner_message_cannot_carry_our_clients_records(world):
    message = {"resourceType": "Bundle", "type": "message",
               "identifier": {"system": "urn:partner:msg", "value": "m-1"},
               "timestamp": "2026-04-01T10:00:00Z", "entry": [
                   {"fullUrl": "urn:uuid:8a0c0e2e-0000-4000-8000-000000000001",
                    "resource": {"resourceType": "MessageHeader",
                                 "id": "8a0c0e2e-0000-4000-8000-000000000001",
                                 "eventCoding": {"system": "urn:x", "code": "note"},
                                 "source": {"endpoint": "http://partner.example/fhir"}}},
                   {"fullUrl": "urn:uuid:8a0c0e2e-0000-4000-8000-000000000002",
                    "resource": {"resourceType": "Patient", "name": [{"family": "P1"}],
                                 "identifier": [{"system": "urn:iop:mrn", "value": "x"}]}}]}
    r = world.call("partner", "POST", "$process-message", message)
    assert r.status_code == 403 and "Patient" in r.text
