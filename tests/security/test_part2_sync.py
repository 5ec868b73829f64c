"""42 CFR Part 2 end to end: a dual-diagnosis client (F33.1 major depressive disorder and
F11.20 opioid dependence) referred to a partner EHR, two gateways over real HTTP
(tests/sync/conftest.py). The partner's copy holds the opioid dependence only with the
client's consent; a consent revoked while the delivery waits in the outbox stops it."""
from __future__ import annotations

import json

import pytest

from fhirgw.sync import outbox as ob
from tests.sync.conftest import (OUR_SYSTEM, close, create, fhir, make_gateway,  # noqa: F401
                                 our_db, partner, partner_org, search, write_config)

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_PROFILE = "http://fhirgw.dev/fhir/StructureDefinition/iop-part2-consent"


@pytest.fixture
def ours(our_db, tmp_path):  # noqa: F811
    """Our gateway with the worker driven by the test (``run_once``/``drain``)."""
    gw = make_gateway(our_db, config=write_config(tmp_path), worker=False)
    yield gw
    close(gw)


def client(base: str, mrn: str) -> dict:
    return create(base, {"resourceType": "Patient",
                         "identifier": [{"system": "urn:iop:mrn", "value": mrn}],
                         "name": [{"family": "Rivera", "given": ["Alex"]}],
                         "birthDate": "1991-04-17", "gender": "female"})


def condition(base: str, patient: dict, code: str, display: str) -> dict:
    return create(base, {"resourceType": "Condition",
                         "clinicalStatus": {"coding": [{
                             "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                             "code": "active"}]},
                         "code": {"coding": [{"system": ICD, "code": code, "display": display}]},
                         "subject": {"reference": f"Patient/{patient['id']}"}})


def consent(base: str, patient: dict, org: dict) -> dict:
    return create(base, {
        "resourceType": "Consent", "meta": {"profile": [CONSENT_PROFILE]}, "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient['id']}"},
        "dateTime": "2026-02-20T11:00:00-08:00",
        "organization": [{"reference": f"Organization/{org['id']}"}],
        "policyRule": {"coding": [{"system": ACT, "code": "42CFRPart2"}]},
        "provision": {
            "type": "permit", "period": {"start": "2026-01-01"},
            "actor": [{"role": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP"}]}, "reference": {"reference": f"Organization/{org['id']}"}}],
            "purpose": [{"system": REASON, "code": "TREAT"}],
            "securityLabel": [{"system": ACT, "code": "SUD"}]}})


def refer(base: str, patient: dict, org: dict, reasons: list[dict], **extra) -> dict:
    return create(base, {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                         "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt",
                                              "code": "90792"}],
                                  "text": "Psychiatric evaluation with medical services"},
                         "subject": {"reference": f"Patient/{patient['id']}"},
                         "performer": [{"reference": f"Organization/{org['id']}"}],
                         "reasonReference": [{"reference": f"Condition/{c['id']}",
                                              "display": c["code"]["coding"][0]["display"]}
                                             for c in reasons], **extra})


def partner_copy(partner_base: str, sr: dict) -> dict:  # noqa: F811
    found = search(partner_base, f"ServiceRequest?identifier={OUR_SYSTEM}|"
                                 f"{sr['identifier'][0]['value']}")
    assert len(found) == 1
    return found[0]


def conditions(partner_base: str, code: str) -> list[dict]:
    return search(partner_base, f"Condition?code={ICD}|{code}")


def dual_diagnosis(ours_base: str, mrn: str):
    pat = client(ours_base, mrn)
    mdd = condition(ours_base, pat, "F33.1", "Major depressive disorder, recurrent, moderate")
    oud = condition(ours_base, pat, "F11.20", "Opioid dependence, uncomplicated")
    assert {"SUD", "42CFRPart2"} <= {s["code"] for s in oud["meta"]["security"]}
    return pat, mdd, oud


def rows(gw) -> list[dict]:
    return ob.list_rows(gw.engine)


def payload(gw, row: dict):
    """What the worker would send for an outbox row now."""
    from fhirgw.sync.mapping import IDENTITY
    from fhirgw.sync.partners import endpoint_by_id
    from fhirgw.sync.payloads import build

    endpoint = ob.show(gw.engine, row["id"])["endpoint"].split("/")[1]
    return gw.app.state.router.repo.run(lambda tx: build(
        tx, row["kind"], row["resource"], endpoint_by_id(tx, endpoint), IDENTITY,
        base=gw.base, identifier_system=OUR_SYSTEM), write=False)


def notices(bundle: dict) -> dict[str, str]:
    return {x["url"].rsplit("/", 1)[1]: x["valueString"]
            for x in bundle.get("meta", {}).get("extension") or ()}


def test_partner_gets_the_sud_condition_only_with_consent(ours, partner):  # noqa: F811
    org = partner_org(ours.base, partner.base)

    # Alex consented to disclosure to this partner for treatment
    alex, alex_mdd, alex_oud = dual_diagnosis(ours.base, "MRN-1")
    consent(ours.base, alex, org)
    sr_alex = refer(ours.base, alex, org, [alex_mdd, alex_oud])
    # Blake did not
    blake, blake_mdd, blake_oud = dual_diagnosis(ours.base, "MRN-2")
    sr_blake = refer(ours.base, blake, org, [blake_mdd, blake_oud])

    # the transaction Bundles: the high-water mark, and what the notices say
    by_key = {r["resource"]: r for r in rows(ours)}
    sent = payload(ours, by_key[f"ServiceRequest/{sr_alex['id']}"]).body
    assert [s["code"] for s in sent["meta"]["security"]] == ["R", "NORDSCLCD"]
    assert notices(sent) == {"redisclosure-notice": "42 CFR part 2 prohibits unauthorized use "
                                                    "or disclosure of these records."}
    assert [e["resource"]["resourceType"] for e in sent["entry"]] == \
        ["Patient", "Condition", "Condition", "ServiceRequest", "Task"]
    sent = payload(ours, by_key[f"ServiceRequest/{sr_blake['id']}"]).body
    assert [s["code"] for s in sent["meta"]["security"]] == ["R"]
    assert list(notices(sent)) == ["information-withheld"]
    assert [e["resource"]["resourceType"] for e in sent["entry"]] == \
        ["Patient", "Condition", "ServiceRequest", "Task"]
    assert "F11" not in json.dumps(sent) and "Opioid" not in json.dumps(sent)

    ours.worker.drain()
    assert {r["status"] for r in rows(ours)} == {"sent"}, rows(ours)

    # Alex: the referral with both diagnoses, the opioid dependence still labelled Part 2
    p_sr = partner_copy(partner.base, sr_alex)
    reasons = [r["reference"] for r in p_sr["reasonReference"]]
    assert len(reasons) == 2
    p_oud = [c for c in conditions(partner.base, "F11.20")
             if c["subject"]["reference"] == p_sr["subject"]["reference"]]
    assert len(p_oud) == 1 and f"Condition/{p_oud[0]['id']}" in reasons
    assert {"SUD", "42CFRPart2", "NORDSCLCD"} <= {s["code"] for s in p_oud[0]["meta"]["security"]}

    # Blake: the depression only, and nothing that points at (or names) the withheld record
    p_sr = partner_copy(partner.base, sr_blake)
    assert len(p_sr["reasonReference"]) == 1
    p_mdd = fhir("GET", f"{partner.base}/{p_sr['reasonReference'][0]['reference']}").json()
    assert p_mdd["code"]["coding"][0]["code"] == "F33.1"
    assert [c for c in conditions(partner.base, "F11.20")
            if c["subject"]["reference"] == p_sr["subject"]["reference"]] == []
    assert "Opioid" not in json.dumps(p_sr) and "F11" not in json.dumps(p_sr)
    # the partner holds exactly one opioid-use disorder: Alex's
    assert len(conditions(partner.base, "F11.20")) == 1


def test_revoked_consent_stops_a_queued_delivery(ours, partner):  # noqa: F811
    org = partner_org(ours.base, partner.base)
    pat, mdd, oud = dual_diagnosis(ours.base, "MRN-3")
    given = consent(ours.base, pat, org)
    sr = refer(ours.base, pat, org, [mdd, oud])
    assert [r["status"] for r in rows(ours)] == ["pending"]     # queued, not sent

    # the client revokes the consent before the worker gets to it
    r = fhir("PUT", f"{ours.base}/Consent/{given['id']}", {**given, "status": "inactive"})
    assert r.status_code == 200, r.text

    ours.worker.drain()
    assert [r["status"] for r in rows(ours)] == ["sent"]
    p_sr = partner_copy(partner.base, sr)
    assert len(p_sr["reasonReference"]) == 1
    assert conditions(partner.base, "F11.20") == []
    assert len(conditions(partner.base, "F33.1")) == 1


def test_a_part2_referral_without_consent_is_not_sent(ours, partner):  # noqa: F811
    """A ServiceRequest for opioid use disorder is itself Part 2: without consent nothing of
    the referral goes (not even the Patient), and the outbox says why without naming it."""
    org = partner_org(ours.base, partner.base)
    pat, _mdd, oud = dual_diagnosis(ours.base, "MRN-4")
    sr = refer(ours.base, pat, org, [oud],
               reasonCode=[{"coding": [{"system": ICD, "code": "F11.20"}]}])
    assert "42CFRPart2" in {s["code"] for s in sr["meta"]["security"]}
    ours.worker.drain()
    [row] = rows(ours)
    assert row["status"] == "dead"
    assert "nothing can be disclosed to this recipient without the client's consent" in \
        row["error"]
    assert "F11" not in row["error"]
    assert search(partner.base, "ServiceRequest") == []
    assert search(partner.base, "Patient") == []

    # once the client consents, the operator retries it and it goes
    consent(ours.base, pat, org)
    ob.retry(ours.engine, row["id"])
    ours.worker.drain()
    assert [r["status"] for r in rows(ours)] == ["sent"]
    assert len(conditions(partner.base, "F11.20")) == 1


def test_a_handoff_queued_before_a_revocation_goes_without_the_part2_medication(
        ours, partner):  # noqa: F811
    """The stored message is filtered again at send time."""
    pharmacy = partner_org(ours.base, partner.base, key="pharmacy", code="hl7-fhir-msg")
    pat = create(ours.base, {"resourceType": "Patient",
                             "identifier": [{"system": "urn:iop:mrn", "value": "MRN-5"}],
                             "name": [{"family": "Rivera"}], "birthDate": "1991-04-17",
                             "telecom": [{"system": "phone", "value": "+1-555-0142"}]})
    given = consent(ours.base, pat, pharmacy)

    def mr(display):
        return create(ours.base, {
            "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": {"reference": f"Patient/{pat['id']}"},
            "medicationCodeableConcept": {"coding": [{
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "display": display}]}})
    bup = mr("buprenorphine 8 MG Sublingual Tablet")
    assert "42CFRPart2" in {s["code"] for s in bup["meta"]["security"]}
    ser = mr("sertraline 50 MG Oral Tablet")
    r = fhir("POST", f"{ours.base}/Patient/{pat['id']}/$medication-handoff",
             {"resourceType": "Parameters", "parameter": [
                 {"name": "recipient",
                  "valueReference": {"reference": f"Organization/{pharmacy['id']}"}}]})
    assert r.status_code == 200, r.text
    assert "buprenorphine" in r.text                      # consented when it was made
    [row] = [x for x in rows(ours) if x["kind"] == "message"]

    r = fhir("PUT", f"{ours.base}/Consent/{given['id']}", {**given, "status": "inactive"})
    assert r.status_code == 200, r.text
    sent = payload(ours, row).body
    assert "buprenorphine" not in json.dumps(sent)
    assert sent["entry"][0]["resource"]["focus"] == [
        {"reference": f"MedicationRequest/{ser['id']}"}]
    assert list(notices(sent)) == ["information-withheld"]
    assert not {"SUD", "ETH", "42CFRPart2", "NORDSCLCD"} & \
        {s["code"] for s in sent["meta"].get("security") or ()}

    ours.worker.drain()
    assert {x["status"] for x in rows(ours) if x["kind"] == "message"} == {"sent"}
    found = search(partner.base, "MedicationRequest")
    assert [m["medicationCodeableConcept"]["coding"][0]["display"] for m in found] == \
        ["sertraline 50 MG Oral Tablet"]
