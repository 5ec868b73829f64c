"""$discharge and $document: a dual-diagnosis client leaves the IOP with a discharge summary.

Alex Rivera (F33.1 recurrent depression + F10.20 alcohol dependence, the latter under
42 CFR Part 2) finishes a co-occurring disorders IOP on 2026-02-27 with a relapse-prevention
plan, sertraline, an open psychiatry referral, a sister and a care team for support, and
six bi-weekly follow-ups. Runs on SQLite and PostgreSQL.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta

import pytest

from fhirgw.model.errors import BadRequest
from fhirgw.operations.discharge import follow_up_dates, parse_parameters
from fhirgw.operations.document import parse_reference, render_html, safe_narrative

BASE = "http://testserver/fhir"
FHIR = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SP = "http://fhirgw.dev/fhir/StructureDefinition/"
CS = "http://fhirgw.dev/fhir/CodeSystem/"
XHTML = "{http://www.w3.org/1999/xhtml}"
PART2 = [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"},
         {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ETH"},
         {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "42CFRPart2"}]


def ref(target: str) -> dict:
    return {"reference": target}


def cc(system: str, code: str, display: str | None = None, text: str | None = None) -> dict:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    out = {"coding": [c]}
    if text:
        out["text"] = text
    return out


def rpp_activity(code: str, description: str, **extra) -> dict:
    return {"detail": {"status": "not-started", "code": cc(CS + "iop-relapse-prevention", code),
                       "description": description, **extra}}


def scenario() -> list[dict]:
    """The client's record, as resources with the ids the test refers to."""
    alex = "Patient/alex"
    return [
        {"resourceType": "Organization", "id": "iop-program", "name": "Cascade Virtual IOP",
         "telecom": [{"system": "phone", "value": "+1-555-0100"}]},
        {"resourceType": "Organization", "id": "partner-psychiatry",
         "name": "Riverside Psychiatry"},
        {"resourceType": "Practitioner", "id": "care-manager",
         "name": [{"family": "Lee", "given": ["Jordan"]}]},
        {"resourceType": "Practitioner", "id": "psychiatrist",
         "name": [{"family": "Shah", "given": ["Priya"], "prefix": ["Dr."]}]},
        {"resourceType": "Patient", "id": "alex", "meta": {"profile": [SP + "iop-client"]},
         "identifier": [{"system": "http://fhirgw.dev/fhir/sid/client-mrn",
                         "value": "MRN-100234"}],
         "name": [{"family": "Rivera", "given": ["Alex"]}],
         "telecom": [{"system": "phone", "value": "+1-555-0142", "use": "mobile"}],
         "gender": "female", "birthDate": "1991-04-17"},
        # another client, in Alex's group session: must never appear in Alex's document
        {"resourceType": "Patient", "id": "sam", "name": [{"family": "Other", "given": ["Sam"]}]},
        {"resourceType": "EpisodeOfCare", "id": "episode", "meta": {"profile": [SP + "iop-episode"]},
         "status": "active",
         "statusHistory": [{"status": "planned",
                            "period": {"start": "2026-01-05", "end": "2026-01-07"}}],
         "type": [cc(CS + "iop-program-type", "cooccurring-iop", "Co-occurring disorders IOP")],
         "diagnosis": [{"condition": ref("Condition/dx-f33-1"), "rank": 1},
                       {"condition": ref("Condition/dx-f10-20"), "rank": 2}],
         "patient": ref(alex), "managingOrganization": ref("Organization/iop-program"),
         "period": {"start": "2026-01-07"}, "careManager": ref("Practitioner/care-manager"),
         "team": [ref("CareTeam/team")]},
        {"resourceType": "Condition", "id": "dx-f10-20", "meta": {"security": PART2},
         "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical",
                              "active"),
         "code": cc(ICD10, "F10.20", "Alcohol dependence, uncomplicated"),
         "subject": ref(alex), "recordedDate": "2026-01-07"},
        {"resourceType": "Condition", "id": "dx-f33-1",
         "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical",
                              "active"),
         "code": cc(ICD10, "F33.1", "Major depressive disorder, recurrent, moderate"),
         "subject": ref(alex), "recordedDate": "2026-01-07"},
        {"resourceType": "Condition", "id": "dx-resolved",
         "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical",
                              "resolved"),
         "code": cc(ICD10, "F43.21", "Adjustment disorder with depressed mood"),
         "subject": ref(alex)},
        {"resourceType": "MedicationRequest", "id": "rx-sertraline", "status": "active",
         "intent": "order",
         "medicationCodeableConcept": cc("http://www.nlm.nih.gov/research/umls/rxnorm",
                                         "312940", "sertraline 100 MG Oral Tablet"),
         "subject": ref(alex), "authoredOn": "2026-01-20",
         "requester": ref("Practitioner/psychiatrist"),
         "reasonReference": [ref("Condition/dx-f33-1")],
         "dosageInstruction": [{"text": "1 tablet by mouth once daily"}]},
        {"resourceType": "MedicationRequest", "id": "rx-stopped", "status": "stopped",
         "intent": "order", "medicationCodeableConcept": {"text": "trazodone 50 mg"},
         "subject": ref(alex)},
        {"resourceType": "MedicationStatement", "id": "ms-naltrexone", "status": "active",
         "meta": {"security": PART2},
         "medicationCodeableConcept": cc("http://www.nlm.nih.gov/research/umls/rxnorm",
                                         "1483744", "naltrexone 50 MG Oral Tablet"),
         "subject": ref(alex), "informationSource": ref(alex),
         "dosage": [{"text": "50 mg by mouth daily"}]},
        {"resourceType": "Goal", "id": "goal-phq9", "meta": {"profile": [SP + "iop-goal"]},
         "lifecycleStatus": "completed",
         "achievementStatus": cc("http://terminology.hl7.org/CodeSystem/goal-achievement",
                                 "achieved", "Achieved"),
         "description": {"text": "Reduce depressive symptoms to mild (PHQ-9 below 10)"},
         "subject": ref(alex),
         "target": [{"measure": cc(LOINC, "44261-6", "PHQ-9 total score"),
                     "detailQuantity": {"value": 10, "comparator": "<"},
                     "dueDate": "2026-02-27"}]},
        {"resourceType": "Goal", "id": "goal-abstinence", "meta": {"profile": [SP + "iop-goal"]},
         "lifecycleStatus": "active",
         "achievementStatus": cc("http://terminology.hl7.org/CodeSystem/goal-achievement",
                                 "improving", "Improving"),
         "description": {"text": "90 days without alcohol"}, "subject": ref(alex),
         "target": [{"measure": {"text": "Days without alcohol"},
                     "detailQuantity": {"value": 90, "unit": "days"},
                     "dueDate": "2026-05-01"}]},
        {"resourceType": "CarePlan", "id": "treatment",
         "meta": {"profile": [SP + "iop-treatment-plan"]}, "status": "active", "intent": "plan",
         "category": [cc("http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                         "assess-plan"), cc(CS + "iop-plan-type", "treatment-plan")],
         "title": "IOP treatment plan", "subject": ref(alex), "period": {"start": "2026-01-07"},
         "goal": [ref("Goal/goal-phq9"), ref("Goal/goal-abstinence")],
         "activity": [{"detail": {"kind": "Appointment", "status": "in-progress",
                                  "code": cc(CS + "iop-session-type", "group", "Group therapy"),
                                  "scheduledTiming": {"repeat": {"frequency": 3, "period": 1,
                                                                 "periodUnit": "wk"}}}}]},
        {"resourceType": "CarePlan", "id": "relapse-plan",
         "meta": {"profile": [SP + "iop-relapse-prevention-plan"]},
         "status": "active", "intent": "plan",
         "category": [cc("http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                         "assess-plan"), cc(CS + "iop-plan-type", "relapse-prevention-plan")],
         "title": "Relapse-prevention plan", "subject": ref(alex),
         "period": {"start": "2026-02-27"}, "author": ref("Practitioner/care-manager"),
         "activity": [
             rpp_activity("trigger", "Conflict at work; being alone on weekend evenings"),
             rpp_activity("warning-sign", "Sleeping less than 5 hours; skipping meals"),
             rpp_activity("coping-strategy", "Call a support contact; TIPP skill"),
             rpp_activity("crisis-resource", "988 Suicide & Crisis Lifeline: call or text 988"),
             rpp_activity("support-contact", "Sister (Maria Rivera)",
                          performer=[ref("RelatedPerson/sister")])]},
        {"resourceType": "ServiceRequest", "id": "referral",
         "meta": {"profile": [SP + "iop-referral"]}, "status": "active", "intent": "order",
         "code": cc(CS + "iop-referral-service", "psychiatry",
                    "Psychiatry for medication management"),
         "subject": ref(alex), "authoredOn": "2026-02-20T10:00:00-08:00",
         "requester": ref("Practitioner/care-manager"),
         "performer": [ref("Organization/partner-psychiatry")],
         "reasonReference": [ref("Condition/dx-f33-1")]},
        {"resourceType": "RelatedPerson", "id": "sister", "patient": ref(alex),
         "relationship": [cc("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "SIS",
                             "sister")],
         "name": [{"family": "Rivera", "given": ["Maria"]}],
         "telecom": [{"system": "phone", "value": "+1-555-0177"}]},
        {"resourceType": "CareTeam", "id": "team", "status": "active", "name": "IOP care team",
         "subject": ref(alex),
         "participant": [
             {"role": [{"text": "Care manager"}], "member": ref("Practitioner/care-manager")},
             {"role": [{"text": "Psychiatrist"}], "member": ref("Practitioner/psychiatrist")},
             {"role": [{"text": "Support contact"}], "member": ref("RelatedPerson/sister")}]},
        {"resourceType": "Appointment", "id": "group-session", "status": "fulfilled",
         "start": "2026-02-25T17:00:00Z", "end": "2026-02-25T18:30:00Z",
         "participant": [{"actor": ref(alex), "status": "accepted"},
                         {"actor": ref("Patient/sam"), "status": "accepted"},
                         {"actor": ref("Practitioner/care-manager"), "status": "accepted"}]},
        {"resourceType": "Encounter", "id": "last-session", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
         "subject": ref(alex), "episodeOfCare": [ref("EpisodeOfCare/episode")],
         "appointment": [ref("Appointment/group-session")],
         "period": {"start": "2026-02-25T17:00:00Z", "end": "2026-02-25T18:30:00Z"}},
        {"resourceType": "Observation", "id": "phq9-intake", "status": "final",
         "code": cc(LOINC, "44261-6", "PHQ-9 total score"), "subject": ref(alex),
         "effectiveDateTime": "2026-01-08", "valueInteger": 18},
        {"resourceType": "Observation", "id": "phq9-exit", "status": "final",
         "code": cc(LOINC, "44261-6", "PHQ-9 total score"), "subject": ref(alex),
         "effectiveDateTime": "2026-02-25", "valueInteger": 8},
    ]


def seed(client, resources: list[dict]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}
    r = client.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text


def params(*items: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(items)}


def discharge(client, episode: str, body: dict | None):
    if body is None:
        return client.post(f"/fhir/EpisodeOfCare/{episode}/$discharge")
    return client.post(f"/fhir/EpisodeOfCare/{episode}/$discharge", json=body, headers=FHIR)


def history_total(client) -> int:
    return client.get("/fhir/_history", params={"_count": "1"}).json()["total"]


def sections_by_code(comp: dict) -> dict[str, dict]:
    return {s["code"]["coding"][0]["code"]: s for s in comp["section"]}


def entry_refs(section: dict) -> list[str]:
    return [e["reference"] for e in section.get("entry", [])]


def local_refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from local_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from local_refs(v)


def assert_document_shape(doc: dict) -> dict[str, dict]:
    """Bundle.type document, identifier, timestamp, Composition first, unique fullUrls;
    returns the resources by ``Type/id``."""
    assert doc["resourceType"] == "Bundle" and doc["type"] == "document"
    assert doc["identifier"]["system"] == "urn:ietf:rfc:3986"
    assert doc["identifier"]["value"].startswith("urn:uuid:")
    datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
    assert doc["entry"][0]["resource"]["resourceType"] == "Composition"
    urls = [e["fullUrl"] for e in doc["entry"]]
    assert len(urls) == len(set(urls))
    by_key = {}
    for e in doc["entry"]:
        r = e["resource"]
        assert e["fullUrl"] == f"{BASE}/{r['resourceType']}/{r['id']}"
        by_key[f"{r['resourceType']}/{r['id']}"] = r
    return by_key


# ---------------------------------------------------------------- the journey's end

def test_discharge_dual_diagnosis_client(client, settings):
    seed(client, scenario())
    task = client.get("/fhir/Task", params={"focus": "ServiceRequest/referral"}).json()
    assert task["total"] == 1  # the referral's Task, made by the workflow rules
    task_id = task["entry"][0]["resource"]["id"]

    r = discharge(client, "episode", params(
        {"name": "date", "valueDate": "2026-02-27"},
        {"name": "followUpCadence", "valueCode": "biweekly"},
        {"name": "followUpCount", "valueInteger": 6}))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    doc = r.json()
    resources = assert_document_shape(doc)

    # the episode is finished
    ep = client.get("/fhir/EpisodeOfCare/episode").json()
    assert ep["status"] == "finished"
    assert ep["period"] == {"start": "2026-01-07", "end": "2026-02-27"}
    assert ep["statusHistory"][-1] == {"status": "active",
                                       "period": {"start": "2026-01-07", "end": "2026-02-27"}}
    assert resources["EpisodeOfCare/episode"]["status"] == "finished"

    # the Composition
    comp = doc["entry"][0]["resource"]
    assert comp["meta"]["profile"] == [
        "http://fhirgw.dev/fhir/StructureDefinition/iop-discharge-summary"]
    assert comp["status"] == "final"
    assert {"system": LOINC, "code": "18842-5", "display": "Discharge summary"} \
        in comp["type"]["coding"]
    assert comp["subject"]["reference"] == "Patient/alex"
    assert comp["author"] == [{"reference": "Practitioner/care-manager"}]
    assert comp["custodian"] == {"reference": "Organization/iop-program"}
    assert comp["encounter"] == {"reference": "Encounter/last-session"}
    assert comp["event"][0]["detail"] == [{"reference": "EpisodeOfCare/episode"}]
    assert comp["event"][0]["period"] == {"start": "2026-01-07", "end": "2026-02-27"}
    assert comp["identifier"]["system"] == settings.identifier_system
    assert comp["date"]
    # Part 2 content inside: the highest confidentiality, and the Composition carries it
    assert comp["confidentiality"] == "R"
    codes = {s["code"] for s in comp["meta"]["security"]}
    assert {"R", "ETH", "42CFRPart2"} <= codes
    assert [s["code"] for s in doc["meta"]["security"]] == ["R"]

    sections = sections_by_code(comp)
    assert list(sections) == ["11535-2", "8648-8", "48765-2", "10183-2", "18776-5", "8653-8",
                              "61146-7", "29762-2"]
    for s in comp["section"]:
        assert s["title"] and s["text"]["status"] == "generated"
        root = ET.fromstring(s["text"]["div"])          # well-formed XHTML
        assert root.tag == XHTML + "div"
        assert "".join(root.itertext()).strip()

    dx = sections["11535-2"]
    assert entry_refs(dx) == ["Condition/dx-f33-1", "Condition/dx-f10-20"]  # by rank
    assert "F10.20" in dx["text"]["div"] and "F43.21" not in dx["text"]["div"]
    assert entry_refs(sections["10183-2"]) == ["MedicationRequest/rx-sertraline",
                                               "MedicationStatement/ms-naltrexone"]
    assert "sertraline" in sections["10183-2"]["text"]["div"]
    assert "trazodone" not in sections["10183-2"]["text"]["div"]
    allergies = sections["48765-2"]
    assert "entry" not in allergies
    assert allergies["emptyReason"]["coding"][0]["code"] == "nilknown"
    course = sections["8648-8"]
    assert entry_refs(course) == ["Observation/phq9-intake", "Observation/phq9-exit"]
    assert "18" in course["text"]["div"] and "51 days" in course["text"]["div"]

    plan = entry_refs(sections["18776-5"])
    follow_ups = [x for x in plan if x.startswith("Appointment/")]
    assert plan[:4] == ["CarePlan/relapse-plan", "CarePlan/treatment",
                        "ServiceRequest/referral", f"Task/{task_id}"]
    assert len(follow_ups) == 6 and plan[4:] == follow_ups
    plan_text = sections["18776-5"]["text"]["div"]
    for words in ("Triggers", "Coping strategies", "Riverside Psychiatry", "requested",
                  "2026-03-13", "2026-05-22"):
        assert words in plan_text
    instructions = sections["8653-8"]["text"]["div"]
    assert "988" in instructions and "+1-555-0100" in instructions
    goals = sections["61146-7"]
    assert entry_refs(goals) == ["Goal/goal-phq9", "Goal/goal-abstinence"] or \
        sorted(entry_refs(goals)) == ["Goal/goal-abstinence", "Goal/goal-phq9"]
    assert "Achieved" in goals["text"]["div"] and "Improving" in goals["text"]["div"]
    assert entry_refs(sections["29762-2"]) == ["RelatedPerson/sister", "CareTeam/team"]
    assert "Maria Rivera" in sections["29762-2"]["text"]["div"]

    # six proposed follow-ups, 14 days apart from the discharge date
    found = client.get("/fhir/Appointment", params={"patient": "Patient/alex",
                                                    "status": "proposed"}).json()
    appts = sorted((e["resource"] for e in found["entry"]), key=lambda a: a["start"])
    assert len(appts) == 6
    assert sorted(f"Appointment/{a['id']}" for a in appts) == sorted(follow_ups)
    days = [date.fromisoformat(a["start"][:10]) for a in appts]
    assert days[0] == date(2026, 3, 13)
    assert all(b - a == timedelta(days=14) for a, b in zip(days, days[1:]))
    for a in appts:
        assert a["status"] == "proposed" and a["minutesDuration"] > 0
        assert {"reference": "Patient/alex"} in [p["actor"] for p in a["participant"]]
        assert a["serviceType"] and a["description"]

    # every resource referenced is in the document, transitively ...
    for key in ("Patient/alex", "Practitioner/care-manager", "Practitioner/psychiatrist",
                "Organization/iop-program", "Organization/partner-psychiatry",
                "RelatedPerson/sister", "CareTeam/team", "Goal/goal-phq9",
                "Encounter/last-session", "EpisodeOfCare/episode"):
        assert key in resources, key
    # ... except another client's records: Sam and the group session are left out
    assert "Patient/sam" not in resources and "Appointment/group-session" not in resources
    for body in resources.values():
        for r_ in local_refs(body):
            parsed = parse_reference(r_, BASE)
            if parsed is None or r_ == "Appointment/group-session":
                continue
            assert f"{parsed[0]}/{parsed[1]}" in resources, (body["resourceType"], r_)

    # the Composition and the issued document are stored
    stored_comp = client.get(f"/fhir/Composition/{comp['id']}").json()
    assert stored_comp["section"] == comp["section"]
    stored_doc = client.get(f"/fhir/Bundle/{doc['id']}").json()
    assert stored_doc["identifier"] == doc["identifier"] and stored_doc["type"] == "document"

    # discharging twice: 422, and nothing is written
    before = history_total(client)
    again = discharge(client, "episode", params({"name": "followUpCadence",
                                                 "valueCode": "weekly"}))
    assert again.status_code == 422, again.text
    issue = again.json()["issue"][0]
    assert "finished" in issue["diagnostics"] and issue["expression"] == ["EpisodeOfCare.status"]
    assert history_total(client) == before
    assert client.get("/fhir/Appointment", params={"patient": "Patient/alex"}).json()[
        "total"] == 7  # the six follow-ups and the group session

    # $document on the stored Composition: the same document, newly assembled
    for method in ("GET", "POST"):
        again_doc = client.request(method, f"/fhir/Composition/{comp['id']}/$document").json()
        assert_document_shape(again_doc)
        assert [e["fullUrl"] for e in again_doc["entry"]] == [e["fullUrl"] for e in doc["entry"]]
        assert again_doc["entry"][0]["resource"] == doc["entry"][0]["resource"]
        assert again_doc["identifier"] != doc["identifier"]

    # the printable page
    page = client.get(f"/fhir/Composition/{comp['id']}/$document", params={"_format": "html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    for words in ("Alex Rivera", "MRN-100234", "Co-occurring disorders IOP", "2026-02-27",
                  "Discharge diagnoses", "Course in the program", "Allergies",
                  "Discharge medications", "Plan of treatment", "Discharge instructions",
                  "Goals", "Support network", "42 CFR part 2", "Jordan Lee"):
        assert words in text, words
    assert "<script" not in text


# ---------------------------------------------------------------- failure paths

def minimal(status: str = "active", with_plan: bool = True) -> list[dict]:
    out = [
        {"resourceType": "Organization", "id": "org", "name": "IOP"},
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "Kim", "given": ["Jo"]}]},
        {"resourceType": "EpisodeOfCare", "id": "ep1", "status": status,
         "patient": ref("Patient/p1"), "managingOrganization": ref("Organization/org"),
         "period": {"start": "2026-01-05"}},
    ]
    if with_plan:
        out.append({"resourceType": "CarePlan", "id": "rpp", "status": "active",
                    "intent": "plan", "subject": ref("Patient/p1"),
                    "category": [cc(CS + "iop-plan-type", "relapse-prevention-plan")],
                    "activity": [rpp_activity("crisis-resource", "Call or text 988")]})
    return out


def test_unknown_episode_is_404(client):
    r = discharge(client, "nope", None)
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Composition/nope/$document").status_code == 404


@pytest.mark.parametrize("body, expression", [
    (params({"name": "date", "valueDate": "27/02/2026"}), "Parameters.parameter[0].valueDate"),
    (params({"name": "date", "valueString": "2026-02-27"}), "Parameters.parameter[0].valueDate"),
    (params({"name": "date", "valueDate": "2026-02-30"}), "Parameters.parameter[0].valueDate"),
    (params({"name": "date", "valueDate": "2026-02-27"},
            {"name": "followUpCadence", "valueCode": "daily"}),
     "Parameters.parameter[1].valueCode"),
    (params({"name": "followUpCount", "valueInteger": -1}),
     "Parameters.parameter[0].valueInteger"),
    (params({"name": "followUpCount", "valueString": "six"}),
     "Parameters.parameter[0].valueInteger"),
    (params({"name": "followUpCadense", "valueCode": "weekly"}), "Parameters.parameter[0].name"),
    (params({"name": "followUpCount", "valueInteger": 2},
            {"name": "followUpCount", "valueInteger": 3}), "Parameters.parameter[1].name"),
    ({"resourceType": "Patient"}, "Parameters"),
])
def test_malformed_parameters_are_400(body, expression):
    with pytest.raises(BadRequest) as exc:
        parse_parameters(body)
    assert exc.value.issues[0].expression == [expression]


def test_refusals_change_nothing(client):
    seed(client, minimal())
    before = history_total(client)
    bad = discharge(client, "ep1", params({"name": "followUpCount", "valueInteger": "6"}))
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["Parameters.parameter[0].valueInteger"]
    early = discharge(client, "ep1", params({"name": "date", "valueDate": "2026-01-01"}))
    assert early.status_code == 422 and "before the admission" in early.text
    assert early.json()["issue"][0]["expression"] == ["Parameters.parameter[0].valueDate"]
    assert history_total(client) == before
    assert client.get("/fhir/EpisodeOfCare/ep1").json()["status"] == "active"

    # the minimal client: defaults (today, no follow-ups), organization as author
    ok = discharge(client, "ep1", None)
    assert ok.status_code == 200, ok.text
    comp = ok.json()["entry"][0]["resource"]
    assert comp["author"] == [{"reference": "Organization/org"}]
    today = datetime.now().date()
    ep = client.get("/fhir/EpisodeOfCare/ep1").json()
    assert ep["status"] == "finished"
    assert abs((date.fromisoformat(ep["period"]["end"]) - today).days) <= 1
    sections = sections_by_code(comp)
    for code in ("11535-2", "10183-2", "48765-2", "29762-2"):
        assert sections[code]["emptyReason"]["coding"][0]["code"] == "nilknown"
    assert entry_refs(sections["18776-5"]) == ["CarePlan/rpp"]
    assert client.get("/fhir/Appointment").json()["total"] == 0


def test_not_dischargeable(client):
    seed(client, minimal(status="planned") + [
        {"resourceType": "EpisodeOfCare", "id": "ep2", "status": "active",
         "patient": ref("Patient/p2"), "managingOrganization": ref("Organization/org"),
         "period": {"start": "2026-01-05"}},
        {"resourceType": "Patient", "id": "p2", "name": [{"family": "Roe"}]}])
    before = history_total(client)
    planned = discharge(client, "ep1", None)
    assert planned.status_code == 422 and "cancel the episode" in planned.text
    no_plan = discharge(client, "ep2", params({"name": "followUpCount", "valueInteger": 3}))
    assert no_plan.status_code == 422 and "relapse-prevention plan" in no_plan.text
    assert history_total(client) == before


# ---------------------------------------------------------------- units

def test_parameter_defaults():
    when, cadence, count = parse_parameters(None)
    assert cadence is None and count == 0
    assert parse_parameters(params({"name": "followUpCadence", "valueCode": "monthly"}))[1:] \
        == ("monthly", 4)
    assert parse_parameters(params({"name": "followUpCount", "valueInteger": 2}))[1:] \
        == ("weekly", 2)


def test_follow_up_dates():
    assert follow_up_dates(date(2026, 2, 27), "weekly", 2) == [date(2026, 3, 6),
                                                               date(2026, 3, 13)]
    assert follow_up_dates(date(2026, 1, 31), "monthly", 3) == [
        date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)]
    assert follow_up_dates(date(2026, 11, 15), "monthly", 2) == [date(2026, 12, 15),
                                                                 date(2027, 1, 15)]


def test_html_narratives_are_sanitized():
    div = ('<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">Hi <b>there</b>'
           '<script>alert(1)</script><a href="javascript:alert(1)">link</a>'
           '<img src="x"/></p></div>')
    out = safe_narrative(div)
    assert out == "<p>Hi <b>there</b><a>link</a></p>"
    doc = {"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": f"{BASE}/Composition/c", "resource": {
            "resourceType": "Composition", "id": "c", "status": "final", "title": "<Summary>",
            "subject": {"display": "Jo <Kim>"},
            "section": [{"title": "Notes", "text": {"status": "generated", "div": div}}]}}]}
    page = render_html(doc)
    assert "<script" not in page and "onclick" not in page and "javascript:" not in page
    assert "&lt;Summary&gt;" in page and "Jo &lt;Kim&gt;" in page
