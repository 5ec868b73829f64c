"""The referral helper: ServiceRequest + Task in one transaction; status changes checked."""
from __future__ import annotations

import pytest
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from fhirgw.client import AsyncClient, InvalidTransition, PreconditionFailed


def _setup(client):
    patient = client.create(Patient(name=[{"family": "Bell", "given": ["Marcus"]}]))
    org = client.create(Organization(name="Lakeside Psychiatry Associates"))
    doc = client.create(Practitioner(name=[{"family": "Chen"}]))
    sr = ServiceRequest(status="active", intent="order",
                        code={"text": "Psychiatric evaluation for medication management"},
                        subject={"reference": f"Patient/{patient.id}"},
                        requester={"reference": f"Practitioner/{doc.id}"})
    return patient, org, doc, sr


def test_create_makes_the_service_request_and_its_task(client):
    patient, org, doc, sr = _setup(client)
    referral = client.referrals.create(sr, to=org)
    task, stored_sr = referral.task, referral.service_request
    assert isinstance(task, Task) and isinstance(stored_sr, ServiceRequest) and stored_sr.id
    assert (task.status, task.intent) == ("requested", "order")
    assert task.code.coding[0].system == "http://hl7.org/fhir/CodeSystem/task-code"
    assert task.code.coding[0].code == "fulfill"
    assert task.focus.reference == f"ServiceRequest/{stored_sr.id}"
    assert task.for_fhir.reference == f"Patient/{patient.id}"
    assert task.owner.reference == f"Organization/{org.id}"
    assert task.requester.reference == f"Practitioner/{doc.id}"
    assert task.authoredOn is not None
    # the partner's work list
    assert [t.id for t in client.referrals.for_owner(org)] == [task.id]


def test_status_changes_follow_the_state_machine(client):
    _, org, _, sr = _setup(client)
    task = client.referrals.create(sr, to=org).task
    accepted = client.referrals.update_status(task, "accepted")
    assert accepted.status == "accepted" and accepted.meta.versionId == "2"
    with pytest.raises(PreconditionFailed):                  # task is the stale version 1
        client.referrals.update_status(task, "cancelled", reason="duplicate")
    with pytest.raises(InvalidTransition, match="needs a reason"):
        client.referrals.update_status(accepted, "on-hold")
    held = client.referrals.update_status(accepted.id, "on-hold", reason="client in hospital")
    assert held.statusReason.text == "client in hospital"
    done = client.referrals.update_status(f"Task/{held.id}", "completed")
    assert done.status == "completed" and done.statusReason is None
    with pytest.raises(InvalidTransition, match="final"):
        client.referrals.update_status(done, "in-progress")
    assert client.read(Task, done.id).status == "completed"


def test_an_existing_service_request_and_an_open_referral(client):
    _, _, _, sr = _setup(client)
    stored = client.create(sr)
    referral = client.referrals.create(stored)                # no owner: an open referral
    assert referral.service_request is stored
    assert referral.task.owner is None
    assert referral.task.focus.reference == f"ServiceRequest/{stored.id}"


@pytest.mark.anyio
async def test_async_referrals(gateway, auth):
    async with AsyncClient(gateway, auth=auth) as client:
        org = await client.create(Organization(name="Harbor Community Support"))
        patient = await client.create(Patient(name=[{"family": "Osei"}]))
        sr = ServiceRequest(status="active", intent="order", code={"text": "Peer support"},
                            subject={"reference": f"Patient/{patient.id}"})
        referral = await client.referrals.create(sr, to=org)
        rejected = await client.referrals.update_status(referral.task, "rejected",
                                                        reason="no capacity")
        assert rejected.status == "rejected"
        assert [t.id async for t in client.referrals.for_owner(org)] == [referral.task.id]
