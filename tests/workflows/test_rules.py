"""IOP rules on every write: episodes, referral Tasks, ServiceRequest coupling, identifiers."""
FJ = {"Content-Type": "application/fhir+json"}
TASK_CODE = {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]}


def create(client, body):
    r = client.post(f"/fhir/{body['resourceType']}", json=body, headers=FJ)
    assert r.status_code == 201, r.text
    return r.json()


def put(client, body, status=200):
    r = client.put(f"/fhir/{body['resourceType']}/{body['id']}", json=body, headers=FJ)
    assert r.status_code == status, r.text
    return r.json()


def test_episode_status_machine(client):
    ep = create(client, {"resourceType": "EpisodeOfCare", "status": "planned",
                         "patient": {"reference": "Patient/p"}})
    ep = put(client, dict(ep, status="active"))
    ep = put(client, dict(ep, status="finished"))
    r = client.put(f"/fhir/EpisodeOfCare/{ep['id']}", json=dict(ep, status="active"), headers=FJ)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["EpisodeOfCare.status"]
    assert "'finished' to 'active'" in issue["diagnostics"]
    # entered-in-error is always allowed
    put(client, dict(ep, status="entered-in-error"))


def test_episode_rule_applies_to_patch_and_transactions(client):
    ep = create(client, {"resourceType": "EpisodeOfCare", "status": "planned",
                         "patient": {"reference": "Patient/p"}})
    r = client.patch(f"/fhir/EpisodeOfCare/{ep['id']}",
                     json=[{"op": "replace", "path": "/status", "value": "finished"}],
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 422
    b = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": dict(ep, status="onhold"),
         "request": {"method": "PUT", "url": f"EpisodeOfCare/{ep['id']}"}}]}
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 422
    assert "Bundle.entry[0]" in r.json()["issue"][0]["diagnostics"]


def referral(org="Organization/psych"):
    return {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "code": {"text": "Psychiatry: medication management"},
            "subject": {"reference": "Patient/p1"}, "requester": {"reference": "Practitioner/t"},
            "performer": [{"reference": org}]}


def tasks_for(client, sr_id):
    b = client.get(f"/fhir/Task?focus=ServiceRequest/{sr_id}").json()
    return [e["resource"] for e in b.get("entry", []) if e["search"]["mode"] == "match"]


def test_service_request_to_an_organization_gets_its_task(client):
    sr = create(client, referral())
    assert sr["identifier"][0]["system"] == "http://fhirgw.dev/fhir/sid/business-id"
    tasks = tasks_for(client, sr["id"])
    assert len(tasks) == 1
    t = tasks[0]
    assert t["status"] == "requested" and t["intent"] == "order"
    assert t["owner"] == {"reference": "Organization/psych"}
    assert t["for"] == {"reference": "Patient/p1"}
    assert t["identifier"]
    # updating the ServiceRequest does not make a second Task
    put(client, dict(sr, priority="urgent"))
    assert len(tasks_for(client, sr["id"])) == 1
    # no performer Organization: no Task
    plain = create(client, dict(referral(), performer=[{"reference": "Practitioner/x"}]))
    assert tasks_for(client, plain["id"]) == []


def test_service_request_arriving_with_its_task_gets_no_second_task(client):
    urn = "urn:uuid:6f1d9d0e-6f33-4d1e-9f0c-1c4c1b8e0a01"
    b = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": urn, "resource": referral(), "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": {"resourceType": "Task", "status": "requested", "intent": "order",
                      "code": TASK_CODE, "focus": {"reference": urn},
                      "owner": {"reference": "Organization/psych"}},
         "request": {"method": "POST", "url": "Task"}}]}
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 200, r.text
    sr_id = r.json()["entry"][0]["resource"]["id"]
    assert len(tasks_for(client, sr_id)) == 1


def test_task_status_machine_and_service_request_follows(client):
    sr = create(client, referral())
    task = tasks_for(client, sr["id"])[0]
    r = client.put(f"/fhir/Task/{task['id']}", json=dict(task, status="completed"), headers=FJ)
    assert r.status_code == 422
    assert "allowed from 'requested': accepted, cancelled, rejected" in r.json()["issue"][0]["diagnostics"]
    task = put(client, dict(task, status="accepted"))
    task = put(client, dict(task, status="in-progress"))
    r = client.put(f"/fhir/Task/{task['id']}", json=dict(task, status="on-hold"), headers=FJ)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Task.statusReason.text"]
    task = put(client, dict(task, status="on-hold", statusReason={"text": "client hospitalised"}))
    task = put(client, dict(task, status="completed",
                            output=[{"type": {"text": "visit"},
                                     "valueReference": {"reference": "Procedure/x"}}]))
    assert client.get(f"/fhir/ServiceRequest/{sr['id']}").json()["status"] == "completed"
    # completed is final
    r = client.put(f"/fhir/Task/{task['id']}", json=dict(task, status="in-progress"), headers=FJ)
    assert r.status_code == 422
    assert "none (it is final)" in r.json()["issue"][0]["diagnostics"]
    # open referrals: ServiceRequest?status=active no longer lists it
    b = client.get("/fhir/ServiceRequest?status=active&subject=Patient/p1").json()
    assert all(e["resource"]["id"] != sr["id"] for e in b.get("entry", []))


def test_rejected_referral_revokes_the_service_request(client):
    sr = create(client, referral())
    task = tasks_for(client, sr["id"])[0]
    put(client, dict(task, status="rejected", statusReason={"text": "no capacity"}))
    assert client.get(f"/fhir/ServiceRequest/{sr['id']}").json()["status"] == "revoked"


def test_partner_polling_and_include(client):
    sr = create(client, referral("Organization/partner-a"))
    task = tasks_for(client, sr["id"])[0]
    since = task["meta"]["lastUpdated"]
    b = client.get("/fhir/Task", params={"owner": "Organization/partner-a", "status": "requested"}).json()
    assert [e["resource"]["id"] for e in b["entry"]] == [task["id"]]
    put(client, dict(task, status="accepted"))
    b = client.get("/fhir/Task", params={"owner": "Organization/partner-a",
                                         "_lastUpdated": f"gt{since}"}).json()
    assert [e["resource"]["status"] for e in b["entry"]] == ["accepted"]
    b = client.get(f"/fhir/Task?_id={task['id']}&_include=Task:focus").json()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in b["entry"]}
    assert modes == {("Task", "match"), ("ServiceRequest", "include")}


def test_update_keeps_the_business_identifier(client):
    sr = create(client, referral())
    ident = sr["identifier"]
    body = {k: v for k, v in sr.items() if k != "identifier"}
    assert put(client, body)["identifier"] == ident


def test_operation_definitions_are_published_and_listed(client):
    cs = client.get("/fhir/metadata").json()
    ops = {o["name"]: o["definition"] for o in cs["rest"][0]["operation"]}
    assert {"discharge", "document", "schedule", "medication-handoff", "process-message",
            "validate", "reindex"} <= set(ops)
    assert ops["validate"] == "http://hl7.org/fhir/OperationDefinition/Resource-validate"
    od = client.get("/fhir/OperationDefinition/fhirgw-discharge").json()
    assert od["url"] == ops["discharge"] and od["code"] == "discharge"
    names = {p["name"] for p in od["parameter"]}
    assert {"date", "followUpCadence", "followUpCount"} <= names
    assert client.get("/fhir/OperationDefinition/Resource-validate").json()["code"] == "validate"
