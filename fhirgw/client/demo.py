"""A realistic synthetic virtual IOP, loaded through the SDK (``fhirgw demo``).

Eight clients with dual diagnoses (ICD-10-CM, e.g. F33.1 + F10.20), their episodes of care,
care teams, treatment plans with measurable goals, weekly PHQ-9 / GAD-7 scores, group
therapy sessions with every client and virtual-attendance Encounters, referrals to partner
organizations as ServiceRequest + Task at different stages, and one discharged client
(finished EpisodeOfCare, relapse-prevention plan, follow-up appointments, medications,
discharge summary Composition). All names and identifiers are invented.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest

from ._client import Client
from ._core import model_class
from ._transaction import Entry, Transaction

__all__ = ["load_demo", "DEMO_ORG_IDENTIFIER", "CLIENTS"]

SYSTEM = "http://northbridge-iop.example.org/fhir/sid"
MRN = f"{SYSTEM}/mrn"
ORG_IDS = f"{SYSTEM}/org"
DEMO_ORG_IDENTIFIER = f"{ORG_IDS}|northbridge-iop"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
SNOMED = "http://snomed.info/sct"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

DX = {
    "F33.1": "Major depressive disorder, recurrent, moderate",
    "F32.1": "Major depressive disorder, single episode, moderate",
    "F41.1": "Generalized anxiety disorder",
    "F43.10": "Post-traumatic stress disorder, unspecified",
    "F31.81": "Bipolar II disorder",
    "F10.20": "Alcohol dependence, uncomplicated",
    "F11.20": "Opioid dependence, uncomplicated",
    "F12.20": "Cannabis dependence, uncomplicated",
    "F14.20": "Cocaine dependence, uncomplicated",
}

#: (given, family, gender, birth date, diagnoses, PHQ-9 trend, GAD-7 trend)
CLIENTS: list[tuple[str, str, str, str, tuple[str, ...], tuple[int, ...], tuple[int, ...]]] = [
    ("Ana", "Rivera", "female", "1990-04-02", ("F33.1", "F10.20"), (19, 16, 13, 11), (14, 12, 10, 9)),
    ("Marcus", "Bell", "male", "1984-11-23", ("F41.1", "F11.20"), (12, 11, 9, 8), (17, 15, 12, 10)),
    ("Leah", "Kowalski", "female", "1997-02-14", ("F43.10", "F10.20"), (18, 17, 15, 12), (16, 15, 13, 11)),
    ("Daniel", "Osei", "male", "1979-08-30", ("F31.81", "F12.20"), (15, 13, 12, 10), (11, 10, 9, 7)),
    ("Priya", "Raman", "female", "2001-06-09", ("F33.1", "F41.1"), (21, 18, 14, 10), (18, 15, 12, 9)),
    ("Tomás", "Herrera", "male", "1992-01-17", ("F32.1", "F14.20"), (16, 14, 11, 9), (10, 9, 8, 6)),
    ("Grace", "Lindqvist", "female", "1988-09-05", ("F41.1", "F10.20"), (13, 12, 10, 8), (19, 16, 14, 11)),
    ("Jamal", "Carter", "male", "1995-12-01", ("F43.10", "F11.20"), (17, 15, 12, 7), (15, 13, 10, 6)),
]

PARTNERS = [
    ("lakeside-psychiatry", "Lakeside Psychiatry Associates", "Psychiatric evaluation and medication management"),
    ("harbor-community", "Harbor Community Support Services", "Peer recovery support and community resources"),
    ("pathways-vocational", "Pathways Vocational Counseling", "Vocational counselling and return-to-work planning"),
    ("riverbend-family", "Riverbend Family Therapy", "Family therapy"),
]

STAFF = [
    ("therapist", "Maya", "Chen", "LCSW", "Licensed clinical social worker"),
    ("psychiatrist", "Samuel", "Okonkwo", "MD", "Psychiatrist"),
    ("facilitator", "Jordan", "Ellis", "CADC", "Certified alcohol and drug counselor"),
    ("family", "Priya", "Nair", "LMFT", "Marriage and family therapist"),
]


def _m(data: dict[str, Any]) -> Resource:
    """A resource JSON as its R4B model."""
    return model_class(str(data["resourceType"])).model_validate(data)


def _cc(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        out["text"] = text
    return out


def _ref(entry: Entry[Any] | str, display: str | None = None) -> dict[str, Any]:
    ref = entry if isinstance(entry, str) else str(entry.reference.reference)
    return {"reference": ref, **({"display": display} if display else {})}


def _at(day: dt.date, hour: int) -> str:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.timezone.utc).isoformat()


def load_demo(client: Client, *, today: dt.date | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Load the demo program; returns how many resources of each type were created."""
    today = today or dt.date.today()
    start = today - dt.timedelta(weeks=6)
    counts: dict[str, int] = {}
    say = progress or (lambda _msg: None)

    def commit(tx: Transaction) -> None:
        for resource in tx.commit().resources:
            name = type(resource).__name__
            counts[name] = counts.get(name, 0) + 1

    # --- the program, its partners and staff
    say("organizations and staff")
    tx = client.transaction()
    org = tx.create(_m({"resourceType": "Organization", "active": True,
                        "identifier": [{"system": ORG_IDS, "value": "northbridge-iop"}],
                        "name": "Northbridge Behavioral Health - Virtual IOP",
                        "telecom": [{"system": "phone", "value": "+1-555-0100"}]}))
    partners = {key: tx.create(_m({"resourceType": "Organization", "active": True,
                                   "identifier": [{"system": ORG_IDS, "value": key}],
                                   "name": name, "type": [{"text": what}]}))
                for key, name, what in PARTNERS}
    staff = {role: tx.create(_m({
        "resourceType": "Practitioner", "active": True,
        "name": [{"family": family, "given": [given], "suffix": [cred]}],
        "qualification": [{"code": {"text": title}}]}))
        for role, given, family, cred, title in STAFF}
    commit(tx)
    org_ref = _ref(org, "Northbridge Behavioral Health - Virtual IOP")

    # --- each client's intake, plan and weekly scores (one transaction per client)
    patients: list[Entry[Any]] = []
    episodes: list[Entry[Any]] = []
    for n, (given, family, gender, born, dx, phq, gad) in enumerate(CLIENTS):
        say(f"client {given} {family}")
        tx = client.transaction()
        mrn = f"IOP-{1001 + n}"
        p = tx.create(_m({"resourceType": "Patient", "active": True,
                          "identifier": [{"system": MRN, "value": mrn}],
                          "name": [{"use": "official", "family": family, "given": [given]}],
                          "gender": gender, "birthDate": born,
                          "telecom": [{"system": "phone", "value": f"+1-555-01{n + 10}",
                                       "use": "mobile"}],
                          "managingOrganization": org_ref}),
                      if_none_exist={"identifier": f"{MRN}|{mrn}"})
        pref = _ref(p, f"{given} {family}")
        conditions = [tx.create(_m({
            "resourceType": "Condition",
            "clinicalStatus": _cc("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                  "active", "Active"),
            "verificationStatus": _cc("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                      "confirmed", "Confirmed"),
            "category": [_cc("http://terminology.hl7.org/CodeSystem/condition-category",
                             "encounter-diagnosis", "Encounter Diagnosis")],
            "code": _cc(ICD10, code, DX[code]), "subject": pref,
            "onsetDateTime": start.isoformat(), "recordedDate": start.isoformat(),
            "recorder": _ref(staff["psychiatrist"])})) for code in dx]
        eoc = tx.create(_m({
            "resourceType": "EpisodeOfCare", "status": "active",
            "statusHistory": [{"status": "planned", "period": {
                "start": (start - dt.timedelta(days=7)).isoformat(), "end": start.isoformat()}}],
            "type": [_cc(f"{SYSTEM}/program", "iop-mh", "Mental health intensive outpatient")],
            "diagnosis": [{"condition": _ref(c), "rank": i + 1} for i, c in enumerate(conditions)],
            "patient": pref, "managingOrganization": org_ref,
            "period": {"start": start.isoformat()}, "careManager": _ref(staff["therapist"])}))
        team = tx.create(_m({
            "resourceType": "CareTeam", "status": "active", "name": f"IOP care team - {given} {family}",
            "subject": pref,
            "participant": [{"role": [{"text": title}], "member": _ref(staff[role])}
                            for role, _g, _f, _c, title in STAFF if role != "family"],
            "managingOrganization": [org_ref]}))
        goals = [
            tx.create(_m({
                "resourceType": "Goal", "lifecycleStatus": "active",
                "achievementStatus": _cc("http://terminology.hl7.org/CodeSystem/goal-achievement",
                                         "improving", "Improving"),
                "description": {"text": "Reduce depressive symptoms to mild (PHQ-9 below 10)"},
                "subject": pref, "startDate": start.isoformat(),
                "target": [{"measure": _cc(LOINC, "44261-6", "PHQ-9 total score"),
                            "detailQuantity": {"value": 10, "comparator": "<", "unit": "{score}"},
                            "dueDate": (start + dt.timedelta(weeks=8)).isoformat()}]})),
            tx.create(_m({
                "resourceType": "Goal", "lifecycleStatus": "active",
                "achievementStatus": _cc("http://terminology.hl7.org/CodeSystem/goal-achievement",
                                         "in-progress", "In Progress"),
                "description": {"text": "Maintain abstinence; attend 3 recovery meetings a week"},
                "subject": pref, "startDate": start.isoformat(),
                "target": [{"measure": {"text": "Days abstinent"},
                            "detailQuantity": {"value": 60, "comparator": ">=", "unit": "d"},
                            "dueDate": (start + dt.timedelta(weeks=10)).isoformat()}]})),
        ]

        def activity(cpt: str, display: str, freq: int, period: float, unit: str,
                     minutes: int) -> dict[str, Any]:
            return {"detail": {"kind": "Appointment", "code": _cc(CPT, cpt, display),
                               "status": "in-progress",
                               "scheduledTiming": {"repeat": {
                                   "frequency": freq, "period": period, "periodUnit": unit,
                                   "duration": minutes, "durationUnit": "min"}},
                               "performer": [_ref(staff["therapist"])]}}
        tx.create(_m({
            "resourceType": "CarePlan", "status": "active", "intent": "plan",
            "title": "IOP treatment plan",
            "category": [_cc("http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                             "assess-plan", "Assessment and Plan of Treatment")],
            "subject": pref, "period": {"start": start.isoformat(),
                                        "end": (start + dt.timedelta(weeks=10)).isoformat()},
            "careTeam": [_ref(team)], "addresses": [_ref(c) for c in conditions],
            "goal": [_ref(g) for g in goals],
            "activity": [activity("90853", "Group psychotherapy", 3, 1, "wk", 180),
                         activity("90834", "Psychotherapy, 45 minutes", 1, 1, "wk", 45),
                         activity("90847", "Family psychotherapy with patient", 1, 2, "wk", 50)]}))
        for week, (phq_score, gad_score) in enumerate(zip(phq, gad)):
            when = _at(start + dt.timedelta(weeks=week + 1), 15)
            for code, display, score in (("44261-6", "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]", phq_score),
                                         ("70274-6", "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]", gad_score)):
                tx.create(_m({"resourceType": "Observation", "status": "final",
                              "category": [_cc(OBS_CAT, "survey", "Survey")],
                              "code": _cc(LOINC, code, display), "subject": pref,
                              "effectiveDateTime": when, "valueInteger": score}))
        commit(tx)
        patients.append(p)
        episodes.append(eoc)

    # --- group sessions: every client, the facilitator; past ones with attendance Encounters
    say("group sessions")
    tx = client.transaction()
    for week in range(4):
        for day_offset in (0, 2, 4):  # Monday, Wednesday, Friday
            day = start + dt.timedelta(weeks=week + 2, days=day_offset)
            past = day < today
            actors = [{"actor": _ref(p), "required": "required",
                       "status": "accepted"} for p in patients]
            actors.append({"actor": _ref(staff["facilitator"]), "required": "required",
                           "status": "accepted"})
            appt = tx.create(_m({
                "resourceType": "Appointment", "status": "fulfilled" if past else "booked",
                "serviceType": [_cc(CPT, "90853", "Group psychotherapy")],
                "description": "IOP group therapy (video)", "start": _at(day, 17),
                "end": _at(day, 20), "minutesDuration": 180, "participant": actors}))
            if past and week < 2:
                for p in patients:
                    tx.create(_m({
                        "resourceType": "Encounter", "status": "finished",
                        "class": {"system": ACT_CODE, "code": "VR", "display": "virtual"},
                        "type": [_cc(CPT, "90853", "Group psychotherapy")],
                        "subject": _ref(p), "appointment": [_ref(appt)],
                        "period": {"start": _at(day, 17), "end": _at(day, 20)},
                        "serviceProvider": org_ref}))
    commit(tx)

    # --- referrals (ServiceRequest + Task) at different stages
    say("referrals")
    plans = [(0, "lakeside-psychiatry", "Psychiatric evaluation for medication management", "accepted"),
             (1, "harbor-community", "Peer recovery support group referral", "in-progress"),
             (2, "pathways-vocational", "Vocational counselling", None),
             (4, "riverbend-family", "Family therapy sessions", "rejected")]
    for idx, partner, text, status in plans:
        patient = patients[idx].resource
        sr = ServiceRequest.model_validate({
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "code": {"text": text}, "subject": {"reference": f"Patient/{patient.id}"},
            "authoredOn": _at(today - dt.timedelta(days=10), 14),
            "requester": {"reference": str(staff["therapist"].reference.reference)}})
        referral = client.referrals.create(
            sr, to=Organization.model_validate(
                {"resourceType": "Organization", "id": partners[partner].resource.id}))
        counts["ServiceRequest"] = counts.get("ServiceRequest", 0) + 1
        counts["Task"] = counts.get("Task", 0) + 1
        task = referral.task
        if status == "rejected":
            client.referrals.update_status(task, "rejected", reason="No openings this quarter")
        elif status:
            task = client.referrals.update_status(task, "accepted")
            if status == "in-progress":
                client.referrals.update_status(task, "in-progress")

    # --- one discharged client: finished episode, relapse prevention, follow-ups, meds
    say("discharge")
    who = patients[-1].resource
    eoc = episodes[-1].resource
    pref = {"reference": f"Patient/{who.id}"}
    end = today - dt.timedelta(days=3)
    data = eoc.model_dump(mode="json")
    data["status"] = "finished"
    data["statusHistory"] = (data.get("statusHistory") or []) + [
        {"status": "active", "period": {"start": start.isoformat(), "end": end.isoformat()}}]
    data["period"] = {"start": start.isoformat(), "end": end.isoformat()}
    client.update(_m(data), if_match=True)
    tx = client.transaction()
    relapse = tx.create(_m({
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "title": "Relapse prevention plan",
        "category": [_cc("http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                         "assess-plan", "Assessment and Plan of Treatment")],
        "subject": pref, "period": {"start": end.isoformat()},
        "description": "Triggers: isolation, payday weekends. Coping: call sponsor, urge "
                       "surfing, 988 Suicide & Crisis Lifeline. Support: sister, NA home group.",
        "activity": [{"detail": {"kind": "Appointment", "status": "scheduled",
                                 "code": _cc(CPT, "90834", "Psychotherapy, 45 minutes"),
                                 "scheduledTiming": {"repeat": {"frequency": 1, "period": 2,
                                                                "periodUnit": "wk"}}}}]}))
    follow_ups = [tx.create(_m({
        "resourceType": "Appointment", "status": "booked",
        "serviceType": [_cc(CPT, "90834", "Psychotherapy, 45 minutes")],
        "description": "Post-discharge follow-up (video)",
        "start": _at(end + dt.timedelta(weeks=2 * (i + 1)), 16),
        "end": _at(end + dt.timedelta(weeks=2 * (i + 1)), 17),
        "participant": [{"actor": pref, "status": "accepted"},
                        {"actor": _ref(staff["therapist"]), "status": "accepted"}]}))
        for i in range(3)]
    meds = [tx.create(_m({
        "resourceType": "MedicationStatement", "status": "active",
        "medicationCodeableConcept": {"text": text}, "subject": pref,
        "effectivePeriod": {"start": start.isoformat()},
        "dosage": [{"text": dose}]}))
        for text, dose in (("Buprenorphine-naloxone 8 mg-2 mg sublingual film", "1 film daily"),
                           ("Sertraline 50 mg tablet", "1 tablet by mouth every morning"))]
    tx.create(_m({
        "resourceType": "Composition", "status": "final",
        "type": _cc(LOINC, "18842-5", "Discharge summary"), "subject": pref,
        "date": _at(end, 18), "author": [_ref(staff["therapist"])],
        "title": "IOP discharge summary",
        "section": [
            {"title": "Discharge diagnosis", "code": _cc(LOINC, "11535-2", "Hospital discharge Dx"),
             "entry": [{"reference": str(d.condition.reference)} for d in eoc.diagnosis or []]},
            {"title": "Discharge medications", "code": _cc(LOINC, "10183-2", "Hospital discharge medications"),
             "entry": [_ref(m) for m in meds]},
            {"title": "Plan of treatment", "code": _cc(LOINC, "18776-5", "Plan of care note"),
             "entry": [_ref(relapse)] + [_ref(a) for a in follow_ups]},
        ]}))
    commit(tx)
    counts["EpisodeOfCare (finished)"] = 1
    return counts

