"""Medication handoff out, $process-message in."""
FJ = {"Content-Type": "application/fhir+json"}


def create(client, body):
    r = client.post(f"/fhir/{body['resourceType']}", json=body, headers=FJ)
    assert r.status_code == 201, r.text
    return r.json()


def setup_client(client):
    pat = create(client, {"resourceType": "Patient", "name": [{"family": "Nguyen", "given": ["Lan"]}],
                          "birthDate": "1988-02-03", "gender": "female",
                          "identifier": [{"system": "urn:iop:mrn", "value": "M-77"}],
                          "telecom": [{"system": "phone", "value": "+1-555-0100"}],
                          "maritalStatus": {"text": "private detail"},
                          "contact": [{"name": {"text": "sister"}}]})
    doc = create(client, {"resourceType": "Practitioner", "name": [{"family": "Okafor", "prefix": ["Dr"]}]})
    pharmacy = create(client, {"resourceType": "Organization", "name": "Main Street Pharmacy"})
    mr = create(client, {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                         "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                                   "code": "312940", "display": "sertraline 50 MG Oral Tablet"}]},
                         "subject": {"reference": f"Patient/{pat['id']}"},
                         "requester": {"reference": f"Practitioner/{doc['id']}"}})
    ms = create(client, {"resourceType": "MedicationStatement", "status": "active",
                         "medicationCodeableConcept": {"text": "naltrexone 50 mg"},
                         "subject": {"reference": f"Patient/{pat['id']}"}})
    return pat, doc, pharmacy, mr, ms


def handoff_params(org_id, note=None):
    p = [{"name": "recipient", "valueReference": {"reference": f"Organization/{org_id}"}}]
    if note:
        p.append({"name": "note", "valueString": note})
    return {"resourceType": "Parameters", "parameter": p}


def test_medication_handoff_builds_and_stores_a_message(client):
    pat, doc, pharmacy, mr, ms = setup_client(client)
    r = client.post(f"/fhir/Patient/{pat['id']}/$medication-handoff",
                    json=handoff_params(pharmacy["id"], "Discharged today"), headers=FJ)
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["type"] == "message" and b["id"]
    header = b["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["code"] == "medication-handoff"
    assert header["destination"][0]["receiver"]["reference"] == f"Organization/{pharmacy['id']}"
    assert header["focus"] == [{"reference": f"MedicationRequest/{mr['id']}"}]
    types = [e["resource"]["resourceType"] for e in b["entry"]]
    # naltrexone is a 42 CFR Part 2 medication and the pharmacy has no consent: withheld,
    # and the message says something was, without saying what
    assert types == ["MessageHeader", "Patient", "MedicationRequest", "Practitioner"]
    notices = [x["url"] for x in b["meta"].get("extension", [])]
    assert "http://fhirgw.dev/fhir/StructureDefinition/information-withheld" in notices
    assert "naltrexone" not in r.text
    minimal = b["entry"][1]["resource"]
    assert "maritalStatus" not in minimal and "contact" not in minimal
    assert minimal["name"][0]["family"] == "Nguyen"
    assert client.get(f"/fhir/Bundle/{b['id']}").status_code == 200


def test_medication_handoff_errors(client):
    pat, _doc, pharmacy, _mr, _ms = setup_client(client)
    r = client.post(f"/fhir/Patient/{pat['id']}/$medication-handoff",
                    json=handoff_params("nope"), headers=FJ)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Parameters.parameter[0].valueReference"]
    r = client.post(f"/fhir/Patient/{pat['id']}/$medication-handoff",
                    json={"resourceType": "Parameters", "parameter": []}, headers=FJ)
    assert r.status_code == 400
    assert client.post("/fhir/Patient/ghost/$medication-handoff",
                       json=handoff_params(pharmacy["id"]), headers=FJ).status_code == 404
    # the message must meet the handoff profile: a client without telehealth contact fails
    no_phone = {k: v for k, v in pat.items() if k != "telecom"}
    client.put(f"/fhir/Patient/{pat['id']}", json=no_phone, headers=FJ)
    r = client.post(f"/fhir/Patient/{pat['id']}/$medication-handoff",
                    json=handoff_params(pharmacy["id"]), headers=FJ)
    assert r.status_code == 422
    assert "Bundle.entry[1].resource.telecom" in {e for i in r.json()["issue"] for e in i["expression"]}
    assert client.get("/fhir/Bundle/_history").json()["total"] == 0


def dispense_message(ident="msg-1", qty=30):
    return {"resourceType": "Bundle", "type": "message",
            "identifier": {"system": "urn:pharmacy:msg", "value": ident},
            "timestamp": "2026-04-01T10:00:00Z",
            "entry": [
                {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001",
                 "resource": {"resourceType": "MessageHeader", "id": "h1",
                              "eventCoding": {"system": "urn:pharmacy:events", "code": "dispense"},
                              "source": {"endpoint": "http://pharmacy.example/fhir"},
                              "focus": [{"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002"}]}},
                {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002",
                 "resource": {"resourceType": "MedicationDispense", "status": "completed",
                              "identifier": [{"system": "urn:pharmacy:rx", "value": "RX-9"}],
                              "medicationCodeableConcept": {"text": "sertraline 50 mg"},
                              "subject": {"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000003"},
                              "quantity": {"value": qty}}},
                {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000003",
                 "resource": {"resourceType": "Patient",
                              "identifier": [{"system": "urn:iop:mrn", "value": "M-77"}],
                              "name": [{"family": "Nguyen"}]}}]}


def test_process_message_applies_once(client):
    pat, *_ = setup_client(client)
    r = client.post("/fhir/$process-message", json=dispense_message(), headers=FJ)
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["entry"][0]["resource"]["response"] == {"identifier": "h1", "code": "ok"}
    disp = client.get("/fhir/MedicationDispense?identifier=urn:pharmacy:rx|RX-9").json()["entry"][0]["resource"]
    # the patient was matched by identifier and the reference rewritten to ours
    assert disp["subject"] == {"reference": f"Patient/{pat['id']}"}
    # the same message again: same answer, nothing applied twice
    again = client.post("/fhir/$process-message", json=dispense_message(qty=99), headers=FJ).json()
    assert again["entry"][0]["resource"]["response"]["code"] == "ok"
    assert client.get("/fhir/MedicationDispense/_history").json()["total"] == 1
    # a new message with the same dispense identifier updates it
    client.post("/fhir/$process-message", json=dispense_message("msg-2", qty=60), headers=FJ)
    d = client.get(f"/fhir/MedicationDispense/{disp['id']}").json()
    assert d["quantity"]["value"] == 60 and d["meta"]["versionId"] == "2"


def test_a_message_failing_halfway_leaves_nothing_of_it(client, db_url):
    """The MedicationDispense (entry 1) is written before the Patient (entry 2) fails:
    the savepoint takes it back, on both databases (writes wait to be sent: the rows of
    the dispense must not go out after the rollback), and the AuditEvent names none of it."""
    msg = dispense_message("half-1")
    msg["entry"][2]["resource"]["gender"] = 5
    r = client.post("/fhir/$process-message", json=msg, headers=FJ)
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["entry"][0]["resource"]["response"]["code"] == "fatal-error"
    assert "Bundle.entry[2]" in resp["entry"][1]["resource"]["issue"][0]["diagnostics"]
    assert client.get("/fhir/MedicationDispense/_history").json()["total"] == 0
    assert client.get("/fhir/MedicationDispense",
                      params={"identifier": "urn:pharmacy:rx|RX-9"}).json()["total"] == 0
    assert client.get("/fhir/Patient/_history").json()["total"] == 0
    from sqlalchemy import create_engine, text
    from fhirgw.store.db import normalize_url
    engine = create_engine(normalize_url(db_url))
    with engine.connect() as c:
        left = c.execute(text("SELECT count(*) FROM resource WHERE res_type IN "
                              "('MedicationDispense', 'Patient')")).scalar()
        # index rows of no stored resource (the message's, had they stayed)
        indexed = c.execute(text("SELECT count(*) FROM sp_token WHERE rid NOT IN "
                                 "(SELECT rid FROM resource)")).scalar()
    engine.dispose()
    assert (left, indexed) == (0, 0)
    events = client.get("/fhir/AuditEvent", params={"entity-type": "MedicationDispense"}).json()
    assert events["total"] == 0


def test_process_message_fatal_error_changes_nothing(client):
    msg = dispense_message("bad-1")
    msg["entry"][1]["resource"]["status"] = 7
    r = client.post("/fhir/$process-message", json=msg, headers=FJ)
    assert r.status_code == 200
    resp = r.json()
    assert resp["entry"][0]["resource"]["response"]["code"] == "fatal-error"
    oo = resp["entry"][1]["resource"]
    assert oo["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[1]" in oo["issue"][0]["diagnostics"]
    assert client.get("/fhir/MedicationDispense/_history").json()["total"] == 0
    assert client.get("/fhir/Patient/_history").json()["total"] == 0
    r = client.post("/fhir/$process-message", json={"resourceType": "Bundle", "type": "collection"},
                    headers=FJ)
    assert r.status_code == 400
