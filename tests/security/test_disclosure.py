"""Consent-checked disclosure (fhirgw.security.disclosure): the filter, the redaction of
references, the Bundle's meta and notices, and the operations that disclose ($document,
$medication-handoff). Alex Rivera: F33.1 recurrent depression (PSY) and F10.20 alcohol
dependence (42 CFR Part 2); the recipient is Riverside Psychiatry."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest

from fhirgw.model.errors import NotFound
from fhirgw.model.resources import validate
from fhirgw.security import principal as principals
from fhirgw.security.disclosure import (REDISCLOSURE_EXTENSION, REDISCLOSURE_TEXT,
                                        WITHHELD_EXTENSION, WITHHELD_TEXT, Disclosure,
                                        NothingToDisclose, min_cardinality, redact_references)
from fhirgw.validation import ProfileValidator
from tests.security.test_consent import ACT, CONF, PARTNER, consent, sec

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
FJ = {"Content-Type": "application/fhir+json"}
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PART2 = ("SUD", "ETH", "NODSCLCD", "NORDSCLCD", "42CFRPart2")
SENSITIVE = {"SUD", "ETH", "PSY", "BH", "42CFRPart2", "NODSCLCD"}


def ref(target):
    return {"reference": target}


def condition(rid, code, display, *labels):
    return {"resourceType": "Condition", "id": rid, "subject": ref("Patient/alex"),
            "meta": {"security": sec(*labels)},
            "code": {"coding": [{"system": ICD, "code": code, "display": display}]}}


AUD = condition("aud", "F10.20", "Alcohol dependence, uncomplicated", *PART2)
MDD = condition("mdd", "F33.1", "Major depressive disorder, recurrent, moderate", "PSY", "BH")
PATIENT = {"resourceType": "Patient", "id": "alex", "name": [{"family": "Rivera"}]}


class _Stored:
    def __init__(self, body):
        self.body = body

    def resource(self):
        return copy.deepcopy(self.body)


class FakeTx:
    """A store in a dict: read by type and id, search Consents by patient."""

    def __init__(self, *bodies):
        self.bodies = {f"{b['resourceType']}/{b['id']}": b for b in bodies}
        self.reads = []

    def read(self, rtype, rid):
        self.reads.append(f"{rtype}/{rid}")
        if f"{rtype}/{rid}" not in self.bodies:
            raise NotFound(f"{rtype}/{rid}")
        return _Stored(self.bodies[f"{rtype}/{rid}"])

    def search(self, rtype, items, limit=1000):
        want = dict(items)
        return [_Stored(b) for b in self.bodies.values() if b["resourceType"] == rtype
                and b.get("status") == want.get("status")
                and b["patient"]["reference"] == want["patient"]]


def act(body) -> set[str]:
    return {s["code"] for s in (body.get("meta") or {}).get("security") or ()
            if s["system"] == ACT}


def extensions(bundle) -> dict[str, str]:
    return {x["url"]: x["valueString"] for x in (bundle.get("meta") or {}).get("extension") or ()}


# ---------------------------------------------------------------- redaction

def test_min_cardinality_follows_types():
    assert min_cardinality(("Encounter", "diagnosis", "condition")) == 1
    assert min_cardinality(("Condition", "evidence", "detail")) == 0
    assert min_cardinality(("Provenance", "target")) == 1
    assert min_cardinality(("Composition", "section", "section", "entry")) == 0
    assert min_cardinality(("Observation", "note", "authorReference")) == 0
    assert min_cardinality(("Observation", "nonsense", "x")) == 0


def test_redact_references():
    withheld = {"Condition/aud"}
    mr = {"resourceType": "MedicationRequest", "id": "m", "status": "active", "intent": "order",
          "text": {"status": "generated", "div": "<div>for alcohol dependence</div>"},
          "subject": ref("Patient/alex"),
          "reasonReference": [{"reference": "Condition/aud", "display": "Alcohol dependence"}],
          "extension": [{"url": "urn:x", "valueReference": ref("Condition/aud/_history/2")}],
          "supportingInformation": [ref("http://us.example/fhir/Condition/aud"),
                                    ref("Condition/mdd")]}
    out = redact_references(mr, withheld)
    assert out == {"resourceType": "MedicationRequest", "id": "m", "status": "active",
                   "intent": "order", "subject": ref("Patient/alex"),
                   "supportingInformation": [ref("Condition/mdd")]}
    assert "Alcohol" not in json.dumps(out) and "alcohol" not in json.dumps(out)
    assert mr["reasonReference"]           # the input is not changed
    # nothing to remove: the same object, narrative kept
    assert redact_references(MDD, withheld) is MDD
    # an element that needs the reference goes with it
    enc = {"resourceType": "Encounter", "id": "e", "status": "finished",
           "class": {"code": "VR"},
           "diagnosis": [{"condition": ref("Condition/aud"), "rank": 1},
                         {"condition": ref("Condition/mdd"), "rank": 2}]}
    assert redact_references(enc, withheld)["diagnosis"] == [{"condition": ref("Condition/mdd"),
                                                              "rank": 2}]
    # a resource that needs it at its top level cannot be kept
    prov = {"resourceType": "Provenance", "id": "p", "target": [ref("Condition/aud")],
            "recorded": "2026-01-07T10:00:00Z", "agent": [{"who": ref("Practitioner/x")}]}
    assert redact_references(prov, withheld) is None


# ---------------------------------------------------------------- the filter

def test_filter_without_consent_withholds_part2_and_what_needs_it():
    enc = {"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "VR"},
           "subject": ref("Patient/alex"),
           "diagnosis": [{"condition": ref("Condition/aud")}, {"condition": ref("Condition/mdd")}]}
    prov = {"resourceType": "Provenance", "id": "p", "target": [ref("Condition/aud")],
            "recorded": "2026-01-07T10:00:00Z", "agent": [{"who": ref("Practitioner/x")}]}
    d = Disclosure(FakeTx(), PARTNER, now=NOW)
    kept = d.filter([PATIENT, MDD, AUD, enc, prov])
    assert [b["id"] for b in kept] == ["alex", "mdd", "e"]
    assert d.withheld == 2 and d.withheld_refs == {"Condition/aud", "Provenance/p"}
    assert not d.disclosed_part2
    assert kept[2]["diagnosis"] == [{"condition": ref("Condition/mdd")}]
    assert d.permits(MDD) and not d.permits(AUD)


def test_filter_with_consent_discloses_part2():
    tx = FakeTx(consent())
    d = Disclosure(tx, PARTNER, now=NOW)
    assert d.filter([PATIENT, MDD, AUD]) == [PATIENT, MDD, AUD]
    assert d.withheld == 0 and d.disclosed_part2
    # another recipient, another purpose, or the consent later revoked: withheld
    assert not Disclosure(tx, "Organization/other", now=NOW).permits(AUD)
    assert not Disclosure(tx, PARTNER, "HPAYMT", now=NOW).permits(AUD)
    tx.bodies["Consent/c1"]["status"] = "inactive"
    assert not Disclosure(tx, PARTNER, now=NOW).permits(AUD)
    # several recipients (one endpoint, two Organizations): all must be permitted
    tx.bodies["Consent/c1"]["status"] = "active"
    assert not Disclosure(tx, [PARTNER, "Organization/other"], now=NOW).permits(AUD)
    assert not Disclosure(tx, [], now=NOW).permits(AUD) and Disclosure(tx, [], now=NOW).permits(MDD)


def test_use_within_the_program_withholds_nothing():
    d = Disclosure(FakeTx(), None)
    assert d.filter([MDD, AUD]) == [MDD, AUD]
    assert d.withheld == 0 and d.disclosed_part2


def test_references_to_part2_records_outside_the_disclosure_are_removed():
    naloxone = {"resourceType": "MedicationRequest", "id": "nlx", "status": "active",
                "intent": "order", "subject": ref("Patient/alex"),
                "medicationCodeableConcept": {"text": "naloxone 4 mg nasal spray"},
                "reasonReference": [{"reference": "Condition/aud",
                                     "display": "Alcohol dependence"}, ref("Condition/mdd"),
                                    ref("Condition/gone")],
                "requester": ref("Practitioner/dr")}
    tx = FakeTx(AUD, MDD)
    d = Disclosure(tx, PARTNER, now=NOW)
    kept = d.filter([naloxone])
    assert kept[0]["reasonReference"] == [ref("Condition/mdd"), ref("Condition/gone")]
    assert d.withheld_refs == {"Condition/aud"}
    assert "Practitioner/dr" not in tx.reads     # only types that can carry Part 2 labels


# ---------------------------------------------------------------- Bundles

def _bundle(kind, *bodies):
    return {"resourceType": "Bundle", "type": kind, "timestamp": "2026-06-01T12:00:00Z",
            "meta": {"security": sec("SUD", "PSY")},
            "entry": [{"fullUrl": f"http://us/fhir/{b['resourceType']}/{b['id']}",
                       "resource": b} for b in bodies]}


def test_finish_bundle_high_water_mark_and_notices():
    low = {**PATIENT, "meta": {"security": [{"system": CONF, "code": "N"}]}}
    d = Disclosure(FakeTx(), PARTNER, now=NOW)
    kept = d.filter([low, MDD, AUD])
    out = d.finish_bundle(_bundle("collection", *kept))
    # R (of the depression) is the high-water mark; nothing reveals what is inside
    assert out["meta"]["security"] == [{"system": CONF, "code": "R", "display": "restricted"}]
    assert extensions(out) == {WITHHELD_EXTENSION: WITHHELD_TEXT}
    assert "F10" not in json.dumps(out) and "lcohol" not in json.dumps(out)
    validate(out)

    # only the Patient goes: its N is the mark, not the R of what was withheld
    d = Disclosure(FakeTx(), PARTNER, now=NOW)
    out = d.finish_bundle(_bundle("collection", *d.filter([low, AUD])))
    assert [s["code"] for s in out["meta"]["security"]] == ["N"]

    # with consent: R, the refrain NORDSCLCD and the 42 CFR 2.32 notice; no sensitivity tags
    d = Disclosure(FakeTx(consent()), PARTNER, now=NOW)
    out = d.finish_bundle(_bundle("collection", *d.filter([low, MDD, AUD])))
    assert [s["code"] for s in out["meta"]["security"]] == ["R", "NORDSCLCD"]
    assert not SENSITIVE & {s["code"] for s in out["meta"]["security"]}
    assert extensions(out) == {REDISCLOSURE_EXTENSION: REDISCLOSURE_TEXT}
    validate(out)


def test_message_focus_follows_what_is_disclosed():
    bup = {"resourceType": "MedicationRequest", "id": "bup", "status": "active",
           "intent": "order", "subject": ref("Patient/alex"),
           "meta": {"security": sec(*PART2)},
           "medicationCodeableConcept": {"text": "buprenorphine 8 mg"}}
    ser = {"resourceType": "MedicationRequest", "id": "ser", "status": "active",
           "intent": "order", "subject": ref("Patient/alex"),
           "medicationCodeableConcept": {"text": "sertraline 50 mg"}}
    header = {"resourceType": "MessageHeader", "id": "h",
              "eventCoding": {"system": "urn:e", "code": "x"}, "source": {"endpoint": "urn:s"},
              "focus": [ref("MedicationRequest/bup"), ref("MedicationRequest/ser")]}
    message = _bundle("message", header, PATIENT, bup, ser)
    out = Disclosure(FakeTx(), PARTNER, now=NOW).message(message)
    assert [e["resource"]["id"] for e in out["entry"]] == ["h", "alex", "ser"]
    assert out["entry"][0]["resource"]["focus"] == [ref("MedicationRequest/ser")]
    assert WITHHELD_EXTENSION in extensions(out)
    assert "buprenorphine" not in json.dumps(out)
    validate(out)
    # nothing of the focus may go: nothing is sent
    header["focus"] = [ref("MedicationRequest/bup")]
    with pytest.raises(NothingToDisclose):
        Disclosure(FakeTx(), PARTNER, now=NOW).message(_bundle("message", header, PATIENT, bup))


def _composition(*labels, sections=None):
    return {"resourceType": "Composition", "id": "dc", "status": "final",
            "meta": {"security": sec(*labels)} if labels else {},
            "type": {"text": "Discharge summary"}, "subject": ref("Patient/alex"),
            "date": "2026-02-27", "author": [ref("Practitioner/cm")], "title": "Summary",
            "section": sections if sections is not None else [
                {"title": "Diagnoses", "code": {"text": "dx"},
                 "text": {"status": "generated",
                          "div": '<div xmlns="http://www.w3.org/1999/xhtml">F10.20 Alcohol '
                                 'dependence; F33.1 depression</div>'},
                 "entry": [ref("Condition/aud"), ref("Condition/mdd")]},
                {"title": "Medications", "code": {"text": "meds"},
                 "text": {"status": "generated",
                          "div": '<div xmlns="http://www.w3.org/1999/xhtml">sertraline</div>'},
                 "entry": [ref("MedicationRequest/ser")]},
                {"title": "Instructions", "code": {"text": "instr"},
                 "text": {"status": "generated",
                          "div": '<div xmlns="http://www.w3.org/1999/xhtml">Call 988</div>'}}]}


SER = {"resourceType": "MedicationRequest", "id": "ser", "status": "active", "intent": "order",
       "subject": ref("Patient/alex"),
       "medicationCodeableConcept": {"text": "sertraline 50 mg"},
       "dosageInstruction": [{"text": "once daily"}]}


def test_document_without_consent_is_redacted():
    comp = _composition("PSY", "BH", *PART2)     # it carries its entries' labels
    doc = _bundle("document", comp, PATIENT, AUD, MDD, SER)
    out = Disclosure(FakeTx(), PARTNER, now=NOW).document(doc)
    text = json.dumps(out)
    assert "F10" not in text and "lcohol" not in text
    assert [e["resource"]["id"] for e in out["entry"]] == ["dc", "alex", "mdd", "ser"]
    c = out["entry"][0]["resource"]
    assert act(c) == {"PSY", "BH"}               # its Part 2 labels went with the content
    titles = [s["title"] for s in c["section"]]
    assert titles == ["Diagnoses", "Medications", "Instructions", "Information withheld"]
    dx, meds, instr, notice = c["section"]
    assert dx["entry"] == [ref("Condition/mdd")]
    # every section with entries gets a narrative of what it keeps (not only the one that
    # lost an entry); those without entries keep theirs
    assert "Major depressive disorder" in dx["text"]["div"]
    assert "sertraline 50 mg: once daily" in meds["text"]["div"]
    assert instr["text"]["div"].endswith("Call 988</div>")
    assert WITHHELD_TEXT in notice["text"]["div"]
    assert out["meta"]["security"] == [{"system": CONF, "code": "R", "display": "restricted"}]
    assert extensions(out) == {WITHHELD_EXTENSION: WITHHELD_TEXT}
    validate(out)


def test_document_with_consent_carries_the_notices():
    comp = _composition("PSY", "BH", *PART2)
    doc = _bundle("document", comp, PATIENT, AUD, MDD, SER)
    out = Disclosure(FakeTx(consent()), PARTNER, now=NOW).document(doc)
    assert [e["resource"]["id"] for e in out["entry"]] == ["dc", "alex", "aud", "mdd", "ser"]
    c = out["entry"][0]["resource"]
    assert c["section"][:3] == comp["section"]  # as written
    assert c["section"][3]["title"] == "Notice of redisclosure"
    assert REDISCLOSURE_TEXT in c["section"][3]["text"]["div"]
    assert [s["code"] for s in out["meta"]["security"]] == ["R", "NORDSCLCD"]
    assert extensions(out) == {REDISCLOSURE_EXTENSION: REDISCLOSURE_TEXT}
    validate(out)


def test_document_that_cannot_be_redacted_is_not_disclosed():
    # the Composition's own code is a substance-use code: no narrative can be kept
    comp = _composition(*PART2, sections=[
        {"title": "SUD", "code": {"coding": [{"system": ICD, "code": "F10.20"}]},
         "text": {"status": "generated",
                  "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}}])
    with pytest.raises(NothingToDisclose):
        Disclosure(FakeTx(), PARTNER, now=NOW).document(_bundle("document", comp, PATIENT))
    # labelled Part 2 with nothing Part 2 among its entries: its labels are unexplained
    comp = _composition(*PART2)
    with pytest.raises(NothingToDisclose):
        Disclosure(FakeTx(), PARTNER, now=NOW).document(_bundle("document", comp, MDD, SER))
    # used within the program it is whole
    out = Disclosure(FakeTx(), None).document(_bundle("document", comp, MDD, SER))
    assert out["entry"][0]["resource"] == comp
    assert extensions(out) == {REDISCLOSURE_EXTENSION: REDISCLOSURE_TEXT}


# ---------------------------------------------------------------- $document

def create(client, body, status=201):
    r = client.post(f"/fhir/{body['resourceType']}", json=body, headers=FJ)
    assert r.status_code == status, r.text
    return r.json()


def part2_consent(patient="Patient/alex", org=PARTNER, **extra):
    body = consent(**extra)
    body.pop("id")
    body["meta"] = {"profile": ["http://fhirgw.dev/fhir/StructureDefinition/iop-part2-consent"]}
    body["patient"] = ref(patient)
    body["organization"] = [ref("Organization/iop-program")]
    body["provision"]["actor"][0]["reference"] = ref(org)
    body["provision"]["period"] = {"start": "2026-01-01"}
    return body


@pytest.fixture
def discharged(client):
    from tests.operations.test_discharge import discharge, params, scenario, seed

    seed(client, scenario())
    r = discharge(client, "episode", params({"name": "date", "valueDate": "2026-02-27"}))
    assert r.status_code == 200, r.text
    return r.json()["entry"][0]["resource"]


def _doc(client, comp, **query):
    return client.get(f"/fhir/Composition/{comp['id']}/$document", params=query)


def test_document_operation_discloses_to_the_recipient(client, discharged):
    comp = discharged
    assert {"SUD", "42CFRPart2"} <= act(comp)   # the summary repeats the F10.20 diagnosis

    # within the program: the whole document, with the mark and the notice
    whole = _doc(client, comp).json()
    keys = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in whole["entry"]}
    assert {"Condition/dx-f10-20", "MedicationStatement/ms-naltrexone"} <= keys
    assert [s["code"] for s in whole["meta"]["security"]] == ["R", "NORDSCLCD"]
    assert extensions(whole) == {REDISCLOSURE_EXTENSION: REDISCLOSURE_TEXT}

    # to Riverside Psychiatry without consent: the alcohol dependence is withheld
    r = _doc(client, comp, recipient="Organization/partner-psychiatry", purpose="TREAT")
    assert r.status_code == 200, r.text
    doc = r.json()
    keys = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in doc["entry"]}
    assert "Condition/dx-f10-20" not in keys and "Condition/dx-f33-1" in keys
    text = json.dumps(doc)
    assert "F10.20" not in text and "Alcohol dependence" not in text
    assert "dx-f10-20" not in text                 # no reference to it is left either
    episode = next(e["resource"] for e in doc["entry"]
                   if e["resource"]["resourceType"] == "EpisodeOfCare")
    assert episode["diagnosis"] == [{"condition": ref("Condition/dx-f33-1"), "rank": 1}]
    c = doc["entry"][0]["resource"]
    assert not {"SUD", "ETH", "42CFRPart2"} & act(c)
    assert c["section"][-1]["title"] == "Information withheld"
    assert [s["code"] for s in doc["meta"]["security"]] == ["R"]
    assert extensions(doc) == {WITHHELD_EXTENSION: WITHHELD_TEXT}
    validate(doc)
    v = ProfileValidator()
    for e in doc["entry"]:
        errors = [i for i in v.validate(e["resource"]) if i.severity in ("error", "fatal")]
        assert not errors, (e["resource"]["resourceType"], errors)
    page = _doc(client, comp, recipient="Organization/partner-psychiatry", _format="html")
    assert page.status_code == 200 and "Information withheld" in page.text
    assert "F10.20" not in page.text

    # with the client's consent: everything, with the notices
    create(client, part2_consent())
    doc = _doc(client, comp, recipient="Organization/partner-psychiatry").json()
    keys = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in doc["entry"]}
    assert "Condition/dx-f10-20" in keys
    c = doc["entry"][0]["resource"]
    assert c["section"][-1]["title"] == "Notice of redisclosure"
    assert "Information withheld" not in [s["title"] for s in c["section"]]
    assert extensions(doc) == {REDISCLOSURE_EXTENSION: REDISCLOSURE_TEXT}
    validate(doc)
    # ... but not to another Organization, nor for payment
    doc = _doc(client, comp, recipient="Organization/iop-program").json()
    assert "F10.20" not in json.dumps(doc)
    doc = _doc(client, comp, recipient="Organization/partner-psychiatry",
               purpose="http://terminology.hl7.org/CodeSystem/v3-ActReason|HPAYMT").json()
    assert "F10.20" not in json.dumps(doc)

    assert _doc(client, comp, recipient="Patient/alex").status_code == 400
    assert _doc(client, comp, purpose="treat me").status_code == 400


def test_document_operation_for_a_partner_client(client, discharged):
    """A partner's client is the recipient; it cannot name another."""
    from fhirgw.operations.document import build_document

    repo = client.app.state.router.repo
    partner = principals.Principal("riverside", "Riverside Psychiatry", principals.Scopes(),
                                   organization=PARTNER)
    token = principals.set_current(partner)
    try:
        doc = repo.run(lambda tx: build_document(tx, discharged["id"],
                                                 base="http://testserver/fhir"), write=False)
        assert "F10.20" not in json.dumps(doc)
        assert extensions(doc) == {WITHHELD_EXTENSION: WITHHELD_TEXT}
        with pytest.raises(Exception) as err:
            repo.run(lambda tx: build_document(tx, discharged["id"],
                                               base="http://testserver/fhir",
                                               recipient="Organization/iop-program"),
                     write=False)
        assert getattr(err.value, "status", None) == 403
    finally:
        principals.reset_current(token)


# ---------------------------------------------------------------- $medication-handoff

def _handoff(client, patient_id, org_id):
    return client.post(f"/fhir/Patient/{patient_id}/$medication-handoff", headers=FJ, json={
        "resourceType": "Parameters",
        "parameter": [{"name": "recipient", "valueReference": ref(f"Organization/{org_id}")}]})


@pytest.fixture
def pharmacy_client(client):
    pat = create(client, {"resourceType": "Patient", "name": [{"family": "Nguyen"}],
                          "identifier": [{"system": "urn:iop:mrn", "value": "M-78"}],
                          "telecom": [{"system": "phone", "value": "+1-555-0100"}],
                          "birthDate": "1988-02-03"})
    pharmacy = create(client, {"resourceType": "Organization", "name": "Main Street Pharmacy"})
    oud = create(client, {"resourceType": "Condition", "subject": ref(f"Patient/{pat['id']}"),
                          "code": {"coding": [{"system": ICD, "code": "F11.20",
                                               "display": "Opioid dependence, uncomplicated"}]}})

    def mr(code, display, **extra):
        return create(client, {"resourceType": "MedicationRequest", "status": "active",
                               "intent": "order", "subject": ref(f"Patient/{pat['id']}"),
                               "medicationCodeableConcept": {"coding": [{
                                   "system": RXNORM, "code": code, "display": display}]},
                               **extra})
    bup = mr("1010600", "buprenorphine 8 MG / naloxone 2 MG Sublingual Film")
    nlx = mr("1725065", "naloxone 4 MG/ACTUAT Nasal Spray",
             reasonReference=[{"reference": f"Condition/{oud['id']}",
                               "display": "Opioid dependence"}])
    assert {"SUD", "42CFRPart2"} <= act(bup) and not act(nlx)
    return pat, pharmacy, bup, nlx


def test_handoff_leaves_out_part2_medications(client, pharmacy_client):
    pat, pharmacy, bup, nlx = pharmacy_client
    r = _handoff(client, pat["id"], pharmacy["id"])
    assert r.status_code == 200, r.text
    b = r.json()
    text = json.dumps(b)
    assert "buprenorphine" not in text and "Opioid" not in text and "F11" not in text
    header = b["entry"][0]["resource"]
    assert header["focus"] == [ref(f"MedicationRequest/{nlx['id']}")]
    sent = [e["resource"] for e in b["entry"][1:]]
    assert [x["resourceType"] for x in sent] == ["Patient", "MedicationRequest"]
    assert "reasonReference" not in sent[1]    # it pointed at the opioid-use disorder
    assert extensions(b) == {WITHHELD_EXTENSION: WITHHELD_TEXT}
    assert b["meta"]["profile"] == ["http://fhirgw.dev/fhir/StructureDefinition/"
                                    "iop-medication-handoff"]
    assert not SENSITIVE & {s["code"] for s in b["meta"].get("security") or ()}
    errors = [i for i in ProfileValidator().validate(b) if i.severity in ("error", "fatal")]
    assert not errors, errors

    # with the client's consent for this pharmacy the buprenorphine goes, with the notice
    create(client, part2_consent(f"Patient/{pat['id']}", f"Organization/{pharmacy['id']}"))
    b = _handoff(client, pat["id"], pharmacy["id"]).json()
    focus = {f["reference"] for f in b["entry"][0]["resource"]["focus"]}
    assert focus == {f"MedicationRequest/{bup['id']}", f"MedicationRequest/{nlx['id']}"}
    assert extensions(b) == {REDISCLOSURE_EXTENSION: REDISCLOSURE_TEXT}
    assert [s["code"] for s in b["meta"]["security"]] == ["R", "NORDSCLCD"]
    errors = [i for i in ProfileValidator().validate(b) if i.severity in ("error", "fatal")]
    assert not errors, errors


def test_handoff_with_nothing_disclosable_is_422(client, pharmacy_client):
    pat, pharmacy, _bup, nlx = pharmacy_client
    client.put(f"/fhir/MedicationRequest/{nlx['id']}", headers=FJ,
               json={**nlx, "status": "stopped"})
    r = _handoff(client, pat["id"], pharmacy["id"])
    assert r.status_code == 422
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "nothing can be disclosed to this recipient without the client's consent" in \
        outcome["issue"][0]["diagnostics"]
    assert "buprenorphine" not in r.text and "MedicationRequest" not in r.text
    assert client.get("/fhir/Bundle", params={"type": "message"}).json()["total"] == 0


def test_merge_meta_keeps_the_highest_confidentiality_and_every_notice_once():
    from fhirgw.security.disclosure import (REDISCLOSURE_EXTENSION, WITHHELD_EXTENSION,
                                            merge_meta)
    from fhirgw.security.labels import ACT_CODE, CONFIDENTIALITY

    a = {"meta": {"security": [{"system": CONFIDENTIALITY, "code": "N"}]}}
    b = {"meta": {"security": [{"system": CONFIDENTIALITY, "code": "R"},
                               {"system": ACT_CODE, "code": "NORDSCLCD"}],
                  "extension": [{"url": REDISCLOSURE_EXTENSION, "valueString": "x"}]}}
    c = {"meta": {"extension": [{"url": WITHHELD_EXTENSION, "valueString": "y"},
                                {"url": REDISCLOSURE_EXTENSION, "valueString": "x"}]}}
    meta = merge_meta([a, b, c])
    assert [t["code"] for t in meta["security"]] == ["R", "NORDSCLCD"]
    assert sorted(x["url"] for x in meta["extension"]) == sorted(
        [REDISCLOSURE_EXTENSION, WITHHELD_EXTENSION])
    assert merge_meta([{}, {"meta": {}}]) == {}
