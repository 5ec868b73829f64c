"""The SDK's IOP operations against the live gateway (not only respx): discharge, handoff."""
from datetime import date

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.episodeofcare import EpisodeOfCare
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient

PLAN_TYPE = "http://fhirgw.dev/fhir/CodeSystem/iop-plan-type"


def test_discharge_and_handoff_through_the_sdk(client):
    org = client.create(Organization(name="Harbor Virtual IOP"))
    pat = client.create(Patient(name=[{"family": "Mensah", "given": ["Kofi"]}], birthDate=date(1985, 7, 9),
                                identifier=[{"system": "urn:iop:mrn", "value": "SDK-D1"}],
                                telecom=[{"system": "phone", "value": "+1-555-0111"}]))
    ep = client.create(EpisodeOfCare(status="active", patient={"reference": f"Patient/{pat.id}"},
                                     managingOrganization={"reference": f"Organization/{org.id}"},
                                     period={"start": "2026-02-02"}))
    client.create(CarePlan(status="active", intent="plan", subject={"reference": f"Patient/{pat.id}"},
                           category=[{"coding": [{"system": PLAN_TYPE, "code": "relapse-prevention-plan"}]}]))
    client.create(MedicationRequest(status="active", intent="order", subject={"reference": f"Patient/{pat.id}"},
                                    medicationCodeableConcept={"text": "sertraline 50 mg"}))
    doc = client.discharge(ep, follow_up="biweekly", count=3, date=date(2026, 4, 1))
    assert isinstance(doc, Bundle) and doc.type == "document"
    assert doc.entry[0].resource.__resource_type__ == "Composition"
    assert client.read(EpisodeOfCare, ep.id).status == "finished"
    pharmacy = client.create(Organization(name="Corner Pharmacy"))
    msg = client.medication_handoff(pat, recipient=pharmacy, note="discharged 2026-04-01")
    assert msg.type == "message"
    assert msg.entry[0].resource.destination[0].receiver.reference == f"Organization/{pharmacy.id}"
