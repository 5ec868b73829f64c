"""CarePlan/$schedule: a plan's timed activities become Appointments, idempotently."""
from datetime import datetime

FJ = {"Content-Type": "application/fhir+json"}


def plan():
    return {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/c1"},
        "activity": [
            {"detail": {"status": "scheduled", "description": "Individual therapy",
                        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "90837"}]},
                        "performer": [{"reference": "Practitioner/therapist"}],
                        "scheduledTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
                                                       "dayOfWeek": ["mon"], "timeOfDay": ["15:00:00"],
                                                       "duration": 60, "durationUnit": "min"}}}},
            {"detail": {"status": "scheduled", "description": "Group therapy",
                        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "90853"}]},
                        "scheduledTiming": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "wk",
                                                       "dayOfWeek": ["mon", "wed", "fri"],
                                                       "timeOfDay": ["10:00:00"],
                                                       "duration": 90, "durationUnit": "min"}}}},
            {"detail": {"status": "not-started", "description": "Family session (no timing)"}},
        ]}


def params(start, end):
    return {"resourceType": "Parameters", "parameter": [
        {"name": "start", "valueDate": start}, {"name": "end", "valueDate": end}]}


def test_schedule_generates_sessions_once(client):
    cp = client.post("/fhir/CarePlan", json=plan(), headers=FJ).json()
    r = client.post(f"/fhir/CarePlan/{cp['id']}/$schedule", json=params("2026-03-02", "2026-03-15"),
                    headers=FJ)
    assert r.status_code == 200, r.text
    b = r.json()
    appts = [e["resource"] for e in b["entry"]]
    # two weeks: 2 individual (Mondays) + 6 group (Mon/Wed/Fri)
    assert b["total"] == 8
    individual = [a for a in appts if a["serviceType"][0]["coding"][0]["code"] == "90837"]
    assert [a["start"] for a in individual] == ["2026-03-02T15:00:00+00:00", "2026-03-09T15:00:00+00:00"]
    assert individual[0]["minutesDuration"] == 60
    actors = {p["actor"]["reference"] for p in individual[0]["participant"]}
    assert actors == {"Patient/c1", "Practitioner/therapist"}
    group = [a for a in appts if a["serviceType"][0]["coding"][0]["code"] == "90853"]
    assert [datetime.fromisoformat(a["start"]).strftime("%a") for a in group] == ["Mon", "Wed", "Fri"] * 2
    # idempotent: the same range again creates nothing
    again = client.post(f"/fhir/CarePlan/{cp['id']}/$schedule",
                        json=params("2026-03-02", "2026-03-15"), headers=FJ).json()
    assert sorted(e["resource"]["id"] for e in again["entry"]) == sorted(a["id"] for a in appts)
    assert client.get("/fhir/Appointment/_history").json()["total"] == 8
    # the sessions are found by the client's search
    found = client.get("/fhir/Appointment?patient=Patient/c1&_count=100").json()
    assert len(found["entry"]) == 8


def test_schedule_bad_requests(client):
    cp = client.post("/fhir/CarePlan", json=plan(), headers=FJ).json()
    r = client.post(f"/fhir/CarePlan/{cp['id']}/$schedule", json=params("2026-03-10", "2026-03-01"),
                    headers=FJ)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Parameters.parameter[1].valueDate"]
    r = client.post(f"/fhir/CarePlan/{cp['id']}/$schedule", json=params("March", "2026-03-01"),
                    headers=FJ)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Parameters.parameter[0].valueDate"]
    r = client.post(f"/fhir/CarePlan/{cp['id']}/$schedule", json={"resourceType": "Parameters",
                    "parameter": [{"name": "begin", "valueDate": "2026-01-01"}]}, headers=FJ)
    assert r.status_code == 400
    assert client.post("/fhir/CarePlan/none/$schedule", json=params("2026-03-01", "2026-03-02"),
                       headers=FJ).status_code == 404
    assert client.get("/fhir/Appointment/_history").json()["total"] == 0
