"""fhirclient (SMART on FHIR's Python client, strict R4 models) drives the gateway over HTTP.

fhirclient parses every response into its own R4 model classes and raises on anything that
does not fit, so these tests also check that what the gateway sends is well-formed R4.

It authenticates the way fhirclient supports backend services: SMART private_key_jwt. It
finds the token endpoint in the CapabilityStatement (``oauth-uris``), sends our signed
client assertion (``jwt_token``) for a token, and puts the token on every request.
"""
from __future__ import annotations

import pytest

pytest.importorskip("fhirclient")
from fhirclient import client as smart_client  # noqa: E402
from fhirclient.models.appointment import Appointment  # noqa: E402
from fhirclient.models.episodeofcare import EpisodeOfCare  # noqa: E402
from fhirclient.models.patient import Patient  # noqa: E402
from fhirclient.server import FHIRNotFoundException  # noqa: E402

from tests.auth import client_assertion, grant_jwks, signing_key, token_url  # noqa: E402
from tests.integration.iop import (MRN_SYSTEM, appointment, client_patient,  # noqa: E402
                                   episode_of_care, new_mrn)


@pytest.fixture(scope="module")
def smart(live_server):
    key, jwk = signing_key("RS384")
    client_id = grant_jwks(live_server.app, jwk, scope="system/*.cruds")
    client = smart_client.FHIRClient(settings={
        "app_id": client_id, "api_base": live_server.base, "scope": "system/*.cruds",
        "jwt_token": client_assertion(key, jwk, client_id, token_url(live_server.base))})
    client.wants_patient = False   # a backend service: no launch/patient scope
    client.prepare()               # GET /metadata: the token endpoint (oauth-uris)
    client.authorize()             # client_credentials with our client assertion
    assert client.ready, "fhirclient got no access token"
    return client


def _search(model, struct, server):
    return list(model.where(struct=struct).perform_resources_iter(server))


def test_capability_statement_parses(smart):
    assert smart.prepare()  # CapabilityStatement (fhirclient's model) read, token in hand
    cap = smart.server.capabilityStatement
    assert cap.fhirVersion == "4.0.1"
    types = {r.type for r in cap.rest[0].resource}
    assert {"Patient", "EpisodeOfCare", "Appointment"} <= types


def test_patient_create_read_update_search(smart):
    server = smart.server
    mrn = new_mrn()
    patient = Patient(client_patient(mrn, family="Haddad", given="Samir"))
    created = patient.create(server)
    assert created["meta"]["versionId"] == "1"
    pid = created["id"]

    read = Patient.read(pid, server)
    assert read.identifier[0].system == MRN_SYSTEM
    assert read.identifier[0].value == mrn
    assert read.name[0].family == "Haddad"
    assert read.birthDate.as_json() == "1994-07-19"

    read.telecom[0].value = "+1-555-0123"
    read.active = False
    updated = read.update(server)
    assert updated["meta"]["versionId"] == "2"
    again = Patient.read(pid, server)
    assert again.telecom[0].value == "+1-555-0123"
    assert again.active is False

    found = _search(Patient, {"identifier": f"{MRN_SYSTEM}|{mrn}"}, server)
    assert [p.id for p in found] == [pid]
    assert _search(Patient, {"identifier": f"{MRN_SYSTEM}|MRN-NOT-THERE"}, server) == []


def test_episode_and_appointment(smart):
    server = smart.server
    pid = Patient(client_patient(new_mrn())).create(server)["id"]
    ref = f"Patient/{pid}"

    eid = EpisodeOfCare(episode_of_care(ref)).create(server)["id"]
    aid = Appointment(appointment(ref)).create(server)["id"]

    episode = EpisodeOfCare.read(eid, server)
    assert episode.patient.reference == ref
    assert episode.period.start.as_json() == "2026-01-12"
    appt = Appointment.read(aid, server)
    assert appt.minutesDuration == 180
    assert appt.participant[0].actor.reference == ref

    assert [e.id for e in _search(EpisodeOfCare, {"patient": ref}, server)] == [eid]
    assert [a.id for a in _search(Appointment, {"actor": ref, "status": "booked"},
                                  server)] == [aid]

    appt.status = "cancelled"
    appt.cancelationReason = None
    appt.update(server)
    assert Appointment.read(aid, server).status == "cancelled"
    assert _search(Appointment, {"actor": ref, "status": "booked"}, server) == []


def test_read_missing_raises_not_found(smart):
    with pytest.raises(FHIRNotFoundException):
        Patient.read("does-not-exist", smart.server)
