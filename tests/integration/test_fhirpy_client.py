"""fhirpy (a third-party FHIR client) drives the gateway over real HTTP.

Create, read, update, search by identifier and delete a client, with an EpisodeOfCare and
an Appointment referencing them, on SQLite and PostgreSQL.
"""
from __future__ import annotations

import pytest

pytest.importorskip("fhirpy")
from fhirpy import SyncFHIRClient  # noqa: E402
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound  # noqa: E402

from tests.integration.iop import (MRN_SYSTEM, appointment, client_patient,  # noqa: E402
                                   episode_of_care, new_mrn)


@pytest.fixture(scope="module")
def fhir(live_server):
    # fhirpy sends ``authorization`` as the Authorization header of every request
    return SyncFHIRClient(live_server.base, authorization=f"Bearer {live_server.token}")


def test_patient_create_read_update_delete(fhir):
    mrn = new_mrn()
    patient = fhir.resource("Patient", **client_patient(mrn))
    patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"

    again = fhir.reference("Patient", patient.id).to_resource()
    assert again["identifier"][0]["value"] == mrn
    assert again["name"][0]["given"] == ["Adaeze", "N."]
    assert again["telecom"][0]["rank"] == 1

    again["telecom"].append({"system": "phone", "value": "+1-555-0199", "use": "home"})
    again.save()
    assert again["meta"]["versionId"] == "2"
    assert len(fhir.reference("Patient", patient.id).to_resource()["telecom"]) == 3

    again.delete()
    with pytest.raises(ResourceNotFound):
        fhir.reference("Patient", patient.id).to_resource()


def test_search_by_identifier(fhir):
    mrn = new_mrn()
    created = fhir.resource("Patient", **client_patient(mrn, family="Lindqvist", given="Maja"))
    created.save()
    fhir.resource("Patient", **client_patient(new_mrn(), family="Lindqvist")).save()

    found = fhir.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}").fetch_all()
    assert [p.id for p in found] == [created.id]
    # the same via .get(): exactly one match
    assert fhir.resources("Patient").search(identifier=mrn).get().id == created.id
    assert fhir.resources("Patient").search(identifier=f"{MRN_SYSTEM}|nope").fetch_all() == []
    assert len(fhir.resources("Patient").search(family="Lindqvist").fetch_all()) == 2


def test_conditional_update_by_mrn_is_idempotent(fhir):
    """The partner-sync upsert: PUT Patient?identifier=MRN creates once, then updates.

    (fhirpy's ``create(**params)``/``get_or_create`` put the condition in the POST query
    string, not in If-None-Exist, so they are not standard FHIR conditional creates.)
    """
    mrn = new_mrn()
    cond = fhir.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}")
    first, created = cond.update(fhir.resource("Patient", **client_patient(mrn)))
    assert created is True
    body = client_patient(mrn)
    body["telecom"][0]["value"] = "+1-555-0177"
    second, created = cond.update(fhir.resource("Patient", **body))
    assert created is False
    assert second.id == first.id
    assert second["meta"]["versionId"] == "2"
    assert len(cond.fetch_all()) == 1


def test_episode_and_appointment_for_a_client(fhir):
    patient = fhir.resource("Patient", **client_patient(new_mrn()))
    patient.save()
    ref = f"Patient/{patient.id}"

    episode = fhir.resource("EpisodeOfCare", **episode_of_care(ref))
    episode.save()
    appt = fhir.resource("Appointment", **appointment(ref))
    appt.save()
    later = fhir.resource("Appointment", **appointment(ref, "2026-02-02T17:00:00Z",
                                                       "2026-02-02T20:00:00Z"))
    later.save()

    read = fhir.reference("EpisodeOfCare", episode.id).to_resource()
    assert read["patient"]["reference"] == ref
    assert read["type"][0]["coding"][0]["code"] == "iop-mh"

    episodes = fhir.resources("EpisodeOfCare").search(patient=ref, status="active").fetch_all()
    assert [e.id for e in episodes] == [episode.id]

    appts = (fhir.resources("Appointment").search(patient=ref).sort("date").fetch_all())
    assert [a.id for a in appts] == [appt.id, later.id]
    january = fhir.resources("Appointment").search(
        patient=ref, date__ge="2026-01-01", date__lt="2026-02-01").fetch_all()
    assert [a.id for a in january] == [appt.id]

    # the session happened: fulfilled; the episode finishes
    appt["status"] = "fulfilled"
    appt.save()
    assert fhir.reference("Appointment", appt.id).to_resource()["status"] == "fulfilled"
    read["status"] = "finished"
    read["period"]["end"] = "2026-03-01"
    read.save()
    assert fhir.resources("EpisodeOfCare").search(patient=ref, status="active").fetch_all() == []


def test_invalid_resource_is_an_operation_outcome(fhir):
    bad = client_patient(new_mrn())
    bad["birthDate"] = "19/07/1994"
    with pytest.raises(OperationOutcome) as info:
        fhir.resource("Patient", **bad).save()
    issue = info.value.resource["issue"][0]
    assert issue["severity"] == "error"
    assert "Patient.birthDate" in issue["expression"]


def test_fhirpy_count_gets_a_total(fhir):
    """fhirpy's ``count()`` asks ``?_count=0`` and reads ``Bundle.total``.

    FHIR R5 (search.html#_count) says _count=0 SHALL be treated as _summary=count, and HAPI
    does so for R4 too; the gateway answers _count=0 with no ``total`` when anything
    matches, so fhirpy raises KeyError('total').
    """
    family = "Count" + new_mrn()[4:]
    for _ in range(3):
        fhir.resource("Patient", **client_patient(new_mrn(), family=family)).save()
    assert fhir.resources("Patient").search(family=family).count() == 3
