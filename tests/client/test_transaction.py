"""Transactions and batches: urn:uuid references resolved, results mapped back to entries."""
from __future__ import annotations

import pytest
from fhir.resources.R4B.appointment import Appointment, AppointmentParticipant
from fhir.resources.R4B.episodeofcare import EpisodeOfCare
from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.patient import Patient

from fhirgw.client import AsyncClient, NotFound, ValidationError

from .conftest import TAG_SYSTEM, tagged


def test_transaction_resolves_references_and_maps_results(client, tag):
    patient = Patient(meta=Meta(**tagged(tag)), name=[{"family": "Okafor"}])
    with client.transaction() as tx:
        p = tx.create(patient)
        assert p.reference.reference.startswith("urn:uuid:")
        episode = tx.create(EpisodeOfCare(status="active", patient=p.reference))
        appt = tx.create(Appointment(status="booked", participant=[
            AppointmentParticipant(actor=p.reference, status="accepted")]))
        with pytest.raises(LookupError, match="not been sent"):
            p.resource
    result = tx.result
    assert len(result) == 3
    created = result[p]
    assert isinstance(created, Patient) and created.id
    assert p.status == 201 and p.location.startswith(f"Patient/{created.id}")
    assert result[episode].patient.reference == f"Patient/{created.id}"
    assert appt.resource.participant[0].actor.reference == f"Patient/{created.id}"
    assert p.reference.reference == f"Patient/{created.id}"      # now the server's identity
    assert [type(r).__name__ for r in result.resources] == ["Patient", "EpisodeOfCare", "Appointment"]
    assert client.read(EpisodeOfCare, episode.resource.id).patient.reference == f"Patient/{created.id}"


def test_update_delete_and_read_entries(client, tag):
    existing = client.create(Patient(meta=Meta(**tagged(tag)), active=True))
    doomed = client.create(Patient(meta=Meta(**tagged(tag))))
    other = client.create(Patient(meta=Meta(**tagged(tag))))
    existing.active = False
    with client.transaction() as tx:
        upd = tx.update(existing, if_match=True)
        tx.delete(doomed)
        again = tx.read(Patient, existing.id)
        made = tx.create(Patient(meta=Meta(**tagged(tag))),
                         if_none_exist={"_id": other.id})    # matches: nothing new
    assert upd.resource.meta.versionId == "2"
    assert again.resource.active is False
    assert made.status == 200 and made.resource.id == other.id
    assert client.search(Patient).where(_tag=f"{TAG_SYSTEM}|{tag}").count() == 2


def test_a_failing_transaction_stores_nothing(client, tag):
    tx = client.transaction()
    tx.create(Patient(meta=Meta(**tagged(tag))))
    bad = Patient.model_construct(meta=Meta(**tagged(tag)), birthDate="not a date")
    tx.create(bad)
    with pytest.raises(ValidationError) as err:
        tx.commit()
    assert "entry[1]" in str(err.value)
    assert client.search(Patient).where(_tag=f"{TAG_SYSTEM}|{tag}").count() == 0


def test_leaving_the_block_with_an_exception_sends_nothing(client, tag):
    with pytest.raises(RuntimeError):
        with client.transaction() as tx:
            tx.create(Patient(meta=Meta(**tagged(tag))))
            raise RuntimeError("changed my mind")
    assert tx.result is None
    assert client.search(Patient).where(_tag=f"{TAG_SYSTEM}|{tag}").count() == 0


def test_batch_entries_fail_on_their_own(client, tag):
    with client.batch() as batch:
        good = batch.create(Patient(meta=Meta(**tagged(tag))))
        missing = batch.read(Patient, "does-not-exist")
    assert good.ok and good.resource.id
    assert not missing.ok and missing.status == 404
    with pytest.raises(NotFound):
        batch.result[missing]
    assert list(batch.result.errors) == [missing]
    assert batch.result.resources == [good.resource]


def test_an_empty_transaction_sends_nothing(client):
    with client.transaction() as tx:
        pass
    assert len(tx.result) == 0


@pytest.mark.anyio
async def test_async_transaction(gateway, auth, tag):
    async with AsyncClient(gateway, auth=auth) as client:
        async with client.transaction() as tx:
            p = tx.create(Patient(meta=Meta(**tagged(tag)), name=[{"family": "Async"}]))
            e = tx.create(EpisodeOfCare(status="planned", patient=p.reference))
        assert e.resource.patient.reference == f"Patient/{p.resource.id}"
        assert await client.search(Patient).where(_tag=f"{TAG_SYSTEM}|{tag}").count() == 1
