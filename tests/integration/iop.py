"""Realistic IOP (intensive outpatient program) data shared by the integration tests."""
from __future__ import annotations

import uuid

MRN_SYSTEM = "http://northbridge-iop.example.org/fhir/sid/mrn"
IOP_TYPE = {"coding": [{"system": "http://northbridge-iop.example.org/fhir/CodeSystem/program",
                        "code": "iop-mh", "display": "Mental health intensive outpatient"}]}


def new_mrn() -> str:
    return "MRN-" + uuid.uuid4().hex[:10].upper()


def client_patient(mrn: str, family: str = "Okafor", given: str = "Adaeze") -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"use": "usual",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": "MR", "display": "Medical record number"}]},
             "system": MRN_SYSTEM, "value": mrn},
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given, "N."]}],
        "telecom": [{"system": "phone", "value": "+1-555-0142", "use": "mobile", "rank": 1},
                    {"system": "email", "value": f"{given.lower()}@example.org"}],
        "gender": "female",
        "birthDate": "1994-07-19",
        "address": [{"use": "home", "line": ["12 Elm St"], "city": "Springfield",
                     "state": "IL", "postalCode": "62704"}],
    }


def episode_of_care(patient_ref: str) -> dict:
    return {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "statusHistory": [{"status": "planned", "period": {"start": "2026-01-05",
                                                            "end": "2026-01-12"}}],
        "type": [IOP_TYPE],
        "patient": {"reference": patient_ref},
        "period": {"start": "2026-01-12"},
    }


def appointment(patient_ref: str, start: str = "2026-01-14T17:00:00Z",
                end: str = "2026-01-14T20:00:00Z") -> dict:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "serviceType": [{"coding": [{"system": "http://snomed.info/sct", "code": "310584009",
                                     "display": "Psychotherapy service"}]}],
        "description": "IOP group session (virtual)",
        "start": start,
        "end": end,
        "minutesDuration": 180,
        "participant": [{"actor": {"reference": patient_ref}, "required": "required",
                         "status": "accepted"}],
    }
