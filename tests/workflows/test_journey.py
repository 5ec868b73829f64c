"""One client's whole IOP journey, as a partner EHR and the clinicians would drive it.

Intake -> treatment plan and its sessions (individual and group) -> check-in scores ->
a referral the partner accepts and completes -> discharge with follow-ups -> medication
handoff to the pharmacy. Assertions on the stored state and on the discharge document.
"""
FJ = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
PLAN_TYPE = "http://fhirgw.dev/fhir/CodeSystem/iop-plan-type"
TASK_CODE = {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]}


def post(client, body):
    r = client.post(f"/fhir/{body['resourceType']}", json=body, headers=FJ)
    assert r.status_code == 201, r.text
    return r.json()


def put(client, body):
    r = client.put(f"/fhir/{body['resourceType']}/{body['id']}", json=body, headers=FJ)
    assert r.status_code in (200, 201), r.text
    return r.json()


def matches(bundle):
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]


def phq9(patient_ref, day, score):
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "survey"}]}],
            "code": {"coding": [{"system": LOINC, "code": "44261-6"}]},
            "subject": {"reference": patient_ref}, "effectiveDateTime": day,
            "valueQuantity": {"value": score, "unit": "{score}"}}


def test_iop_journey(client):
    # --- intake: one transaction from the referring EHR -----------------------------------
    P, E = "urn:uuid:1b0e8a52-0000-4000-8000-000000000001", "urn:uuid:1b0e8a52-0000-4000-8000-000000000002"
    IOP = "urn:uuid:1b0e8a52-0000-4000-8000-000000000003"
    intake = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": IOP, "request": {"method": "POST", "url": "Organization"},
         "resource": {"resourceType": "Organization", "name": "Northbridge Virtual IOP"}},
        {"fullUrl": P, "request": {"method": "POST", "url": "Patient",
                                   "ifNoneExist": "identifier=urn:iop:mrn|J-1"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:iop:mrn", "value": "J-1"}],
                      "name": [{"family": "Reyes", "given": ["Jo"]}], "birthDate": "1990-05-06",
                      "telecom": [{"system": "phone", "value": "+1-555-0199"}]}},
        {"fullUrl": E, "request": {"method": "POST", "url": "EpisodeOfCare"},
         "resource": {"resourceType": "EpisodeOfCare", "status": "planned", "patient": {"reference": P},
                      "managingOrganization": {"reference": IOP}, "period": {"start": "2026-03-02"}}},
        *[{"request": {"method": "POST", "url": "Condition"},
           "resource": {"resourceType": "Condition",
                        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                       "code": "active"}]},
                        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
                        "subject": {"reference": P}}} for code in ("F33.1", "F10.20")],
        {"request": {"method": "POST", "url": "Observation"}, "resource": phq9(P, "2026-03-02", 18)},
    ]}
    r = client.post("/fhir", json=intake, headers=FJ)
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    pid, eid = out[1]["resource"]["id"], out[2]["resource"]["id"]
    pref = f"Patient/{pid}"
    episode = put(client, dict(out[2]["resource"], status="active"))

    # --- treatment plan and its sessions --------------------------------------------------
    therapist = post(client, {"resourceType": "Practitioner", "name": [{"family": "Adeyemi"}]})
    plan = post(client, {
        "resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": pref},
        "category": [{"coding": [{"system": PLAN_TYPE, "code": "treatment-plan"}]}],
        "activity": [{"detail": {"status": "scheduled", "description": "Individual therapy",
                                 "performer": [{"reference": f"Practitioner/{therapist['id']}"}],
                                 "scheduledTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
                                                                "dayOfWeek": ["tue"], "timeOfDay": ["14:00:00"]}}}}]})
    sessions = client.post(f"/fhir/CarePlan/{plan['id']}/$schedule", headers=FJ, json={
        "resourceType": "Parameters", "parameter": [{"name": "start", "valueDate": "2026-03-02"},
                                                    {"name": "end", "valueDate": "2026-03-29"}]}).json()
    assert sessions["total"] == 4
    post(client, {"resourceType": "Goal", "lifecycleStatus": "active", "subject": {"reference": pref},
                  "description": {"text": "PHQ-9 below 10"},
                  "achievementStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/goal-achievement",
                                                    "code": "improving"}]}})

    # a group session with three clients; one does not come
    others = [post(client, {"resourceType": "Patient", "name": [{"family": f"Other{i}"}]}) for i in range(2)]
    group = post(client, {"resourceType": "Appointment", "status": "booked",
                          "start": "2026-03-04T10:00:00Z", "end": "2026-03-04T11:30:00Z",
                          "participant": [{"actor": {"reference": pref}, "status": "accepted"}] +
                                         [{"actor": {"reference": f"Patient/{o['id']}"}, "status": "accepted"} for o in others] +
                                         [{"actor": {"reference": f"Practitioner/{therapist['id']}"}, "status": "accepted"}]})
    for who in (pref, f"Patient/{others[0]['id']}"):   # attendance per client: a VR Encounter
        post(client, {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
                      "subject": {"reference": who}, "appointment": [{"reference": f"Appointment/{group['id']}"}],
                      "episodeOfCare": [{"reference": f"EpisodeOfCare/{eid}"}] if who == pref else []})
    noshow = dict(group, participant=[dict(p, status="declined") if p["actor"]["reference"] == f"Patient/{others[1]['id']}"
                                      else p for p in group["participant"]])
    put(client, noshow)
    mine = matches(client.get(f"/fhir/Appointment?patient={pref}&_count=50").json())
    assert group["id"] in {a["id"] for a in mine} and len(mine) == 5   # 4 individual + the group
    attended = matches(client.get(f"/fhir/Encounter?appointment=Appointment/{group['id']}&class=VR").json())
    assert {e["subject"]["reference"] for e in attended} == {pref, f"Patient/{others[0]['id']}"}
    assert client.get(f"/fhir/Appointment/{group['id']}").json()["status"] == "booked"  # the group still happened

    # --- check-ins ------------------------------------------------------------------------
    for day, score in (("2026-03-16", 14), ("2026-03-30", 9)):
        post(client, phq9(pref, day, score))
    scores = matches(client.get(f"/fhir/Observation?subject={pref}&code={LOINC}|44261-6&_sort=date").json())
    assert [o["valueQuantity"]["value"] for o in scores] == [18, 14, 9]

    # --- referral: psychiatry for medication management -----------------------------------
    psych = post(client, {"resourceType": "Organization", "name": "Riverside Psychiatry"})
    sr = post(client, {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                       "code": {"text": "Psychiatric evaluation and medication management"},
                       "subject": {"reference": pref}, "performer": [{"reference": f"Organization/{psych['id']}"}]})
    inbox = matches(client.get("/fhir/Task", params={"owner": f"Organization/{psych['id']}",
                                                     "status": "requested"}).json())
    assert len(inbox) == 1 and inbox[0]["focus"]["reference"] == f"ServiceRequest/{sr['id']}"
    task = put(client, dict(inbox[0], status="accepted"))
    task = put(client, dict(task, status="completed",
                            output=[{"type": {"text": "evaluation"}, "valueString": "Started sertraline 50 mg"}]))
    assert client.get(f"/fhir/ServiceRequest/{sr['id']}").json()["status"] == "completed"
    post(client, {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                  "medicationCodeableConcept": {"text": "sertraline 50 mg"}, "subject": {"reference": pref}})

    # --- discharge --------------------------------------------------------------------------
    post(client, {"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": pref},
                  "category": [{"coding": [{"system": PLAN_TYPE, "code": "relapse-prevention-plan"}]}],
                  "description": "Triggers, coping strategies, warning signs, crisis line 988"})
    r = client.post(f"/fhir/EpisodeOfCare/{eid}/$discharge", headers=FJ, json={
        "resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": "2026-04-10"},
                                                    {"name": "followUpCadence", "valueCode": "biweekly"},
                                                    {"name": "followUpCount", "valueInteger": 6}]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["type"] == "document"
    comp = doc["entry"][0]["resource"]
    assert comp["type"]["coding"][0]["code"] == "18842-5"
    in_doc = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in doc["entry"]}
    assert pref in in_doc and "MedicationRequest" in {x.split("/")[0] for x in in_doc}
    assert f"Patient/{others[0]['id']}" not in in_doc                 # nobody else's records
    ep = client.get(f"/fhir/EpisodeOfCare/{eid}").json()
    assert ep["status"] == "finished" and ep["period"]["end"].startswith("2026-04-10")
    follow = [a for a in matches(client.get(f"/fhir/Appointment?patient={pref}&status=proposed&_count=50").json())]
    assert len(follow) == 6
    # discharging again is refused and changes nothing
    assert client.post(f"/fhir/EpisodeOfCare/{eid}/$discharge", headers=FJ, json={
        "resourceType": "Parameters", "parameter": []}).status_code == 422

    # --- medication handoff to the pharmacy -------------------------------------------------
    pharmacy = post(client, {"resourceType": "Organization", "name": "Main St Pharmacy"})
    r = client.post(f"/fhir/Patient/{pid}/$medication-handoff", headers=FJ, json={
        "resourceType": "Parameters", "parameter": [
            {"name": "recipient", "valueReference": {"reference": f"Organization/{pharmacy['id']}"}}]})
    assert r.status_code == 200, r.text
    msg = r.json()
    assert msg["entry"][0]["resource"]["destination"][0]["receiver"]["reference"] == f"Organization/{pharmacy['id']}"
    assert any(e["resource"]["resourceType"] == "MedicationRequest" for e in msg["entry"])
    assert episode["id"] == eid
