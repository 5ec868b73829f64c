"""CRUD through the SDK against a live gateway, sync and async: typed R4B models back."""
from __future__ import annotations

import uuid
from datetime import date

import pytest
from fhir.resources.R4B.episodeofcare import EpisodeOfCare
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.reference import Reference

from fhirgw.client import AsyncClient, Gone, NotFound, PreconditionFailed

MRN = "urn:iop:mrn"


def new_patient(family: str = "Rivera") -> Patient:
    return Patient(identifier=[Identifier(system=MRN, value="IOP-" + uuid.uuid4().hex[:8])],
                   name=[HumanName(family=family, given=["Ana"])], birthDate=date(1990, 4, 2))


def test_create_read_update_patch_delete(client):
    created = client.create(new_patient())
    assert isinstance(created, Patient)
    assert type(created).__module__.startswith("fhir.resources.R4B")
    assert created.id and created.meta.versionId == "1"

    again = client.read(Patient, created.id)
    assert again.name[0].family == "Rivera" and again.birthDate == date(1990, 4, 2)

    again.gender = "female"
    v2 = client.update(again, if_match=True)
    assert v2.meta.versionId == "2" and v2.gender == "female"
    with pytest.raises(PreconditionFailed) as stale:
        client.update(again, if_match=True)          # still says version 1
    assert stale.value.status == 412 and stale.value.outcome is not None

    v3 = client.patch(v2, [{"op": "replace", "path": "/gender", "value": "other"}], if_match=True)
    assert v3.gender == "other" and v3.meta.versionId == "3"
    v4 = client.patch(Patient, created.id, [{"op": "add", "path": "/active", "value": True}])
    assert v4.active is True

    assert client.vread(Patient, created.id, 1).gender is None
    assert [p.meta.versionId for p in client.history(Patient, created.id)] == ["4", "3", "2", "1"]
    assert [p.meta.versionId for p in client.history(v4, count=2)] == ["4", "3", "2", "1"]

    client.delete(v4)
    with pytest.raises(Gone) as gone:
        client.read(Patient, created.id)
    assert gone.value.status == 410
    client.delete(Patient, created.id)               # deleting again is a no-op (204)
    with pytest.raises(NotFound):
        client.delete("Patient/" + uuid.uuid4().hex)


def test_conditional_create_returns_the_existing_match(client):
    patient = new_patient("Okafor")
    mrn = patient.identifier[0].value
    first = client.create(patient, if_none_exist={"identifier": f"{MRN}|{mrn}"})
    second = client.create(patient, if_none_exist=f"identifier={MRN}|{mrn}")
    assert first.id == second.id
    assert client.search(Patient).where(identifier=f"{MRN}|{mrn}").count() == 1


def test_conditional_update_upserts(client):
    patient = new_patient("Lindqvist")
    cond = {"identifier": f"{MRN}|{patient.identifier[0].value}"}
    made = client.update(patient, condition=cond)
    patient.gender = "female"
    again = client.update(patient, condition=cond)
    assert again.id == made.id and again.meta.versionId == "2"


def test_references_between_resources(client):
    p = client.create(new_patient())
    eoc = client.create(EpisodeOfCare(status="active", patient=Reference(reference=f"Patient/{p.id}")))
    assert client.read(EpisodeOfCare, eoc.id).patient.reference == f"Patient/{p.id}"
    assert client.capabilities().fhirVersion == "4.0.1"


@pytest.mark.anyio
async def test_async_crud(gateway, auth):
    async with AsyncClient(gateway, auth=auth) as client:
        created = await client.create(new_patient("Async"))
        assert isinstance(created, Patient)
        read = await client.read(Patient, created.id)
        read.active = True
        updated = await client.update(read, if_match=True)
        assert updated.meta.versionId == "2"
        patched = await client.patch(updated, [{"op": "replace", "path": "/active", "value": False}])
        assert patched.active is False
        assert len(await client.history(patched)) == 3
        assert (await client.vread(Patient, created.id, "1")).active is None
        await client.delete(patched)
        with pytest.raises(Gone):
            await client.read(Patient, created.id)
        with pytest.raises(PreconditionFailed):
            await client.update(read, if_match=True)
