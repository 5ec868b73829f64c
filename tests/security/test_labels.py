"""Security labels on write: a dual-diagnosis client (F10.20 alcohol dependence under
42 CFR Part 2, F33.1 recurrent depression). Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from fhirgw.security import (
    ACT_CODE,
    CONFIDENTIALITY,
    MENTAL_HEALTH_VALUE_SET,
    SUD_VALUE_SET,
    CodeMatcher,
    SecurityLabels,
    ValueSetError,
)
from fhirgw.security.labels import load_value_sets, merge
from fhirgw.validation.validator import default_profiles_dir

FJ = {"Content-Type": "application/fhir+json"}
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
PART2 = {"SUD", "ETH", "NODSCLCD", "NORDSCLCD", "42CFRPart2"}


def condition(code, display, patient="Patient/alex", **extra):
    return {"resourceType": "Condition", "subject": {"reference": patient},
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active"}]},
            "code": {"coding": [{"system": ICD, "code": code, "display": display}]}, **extra}


F10 = ("F10.20", "Alcohol dependence, uncomplicated")
F33 = ("F33.1", "Major depressive disorder, recurrent, moderate")


def labels(body) -> list[tuple[str, str]]:
    return [(s["system"], s["code"]) for s in (body.get("meta") or {}).get("security") or ()]


def act(body) -> set[str]:
    return {c for s, c in labels(body) if s == ACT_CODE}


def conf(body) -> list[str]:
    return [c for s, c in labels(body) if s == CONFIDENTIALITY]


def create(client, body) -> dict:
    r = client.post(f"/fhir/{body['resourceType']}", json=body, headers=FJ)
    assert r.status_code == 201, r.text
    return r.json()


def read(client, res_type, res_id) -> dict:
    r = client.get(f"/fhir/{res_type}/{res_id}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def alex(client):
    r = client.put("/fhir/Patient/alex", headers=FJ, json={
        "resourceType": "Patient", "id": "alex", "name": [{"family": "Rivera",
                                                           "given": ["Alex"]}]})
    assert r.status_code in (200, 201), r.text
    return "Patient/alex"


def test_sud_condition_gets_part2_labels(client, alex):
    created = create(client, condition(*F10))
    stored = read(client, "Condition", created["id"])
    for body in (created, stored):
        assert act(body) == PART2
        assert conf(body) == ["R"]
    assert len(labels(stored)) == 6
    displays = {s["code"]: s["display"] for s in stored["meta"]["security"]}
    assert displays["42CFRPart2"] == "42 CFR Part2"
    assert displays["R"] == "restricted"


def test_mental_health_condition_gets_psy_bh(client, alex):
    body = read(client, "Condition", create(client, condition(*F33))["id"])
    assert act(body) == {"PSY", "BH"}
    assert conf(body) == ["R"]


def test_sender_label_is_kept_and_v_stays_v(client, alex):
    sent = condition(*F10, meta={"security": [
        {"system": CONFIDENTIALITY, "code": "V"},
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}]})
    body = read(client, "Condition", create(client, sent)["id"])
    assert conf(body) == ["V"]
    assert ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "HTEST") in labels(body)
    assert act(body) == PART2
    # a sender's N is raised to R, never two confidentiality labels
    sent = condition(*F33, meta={"security": [{"system": CONFIDENTIALITY, "code": "N"}]})
    body = read(client, "Condition", create(client, sent)["id"])
    assert conf(body) == ["R"]


def test_update_keeps_one_copy_and_cannot_strip_labels(client, alex):
    created = create(client, condition(*F10))
    cid = created["id"]
    # the labelled resource sent back as it was: no duplicate
    again = {**created, "note": [{"text": "reviewed"}]}
    r = client.put(f"/fhir/Condition/{cid}", json=again, headers=FJ)
    assert r.status_code == 200, r.text
    body = read(client, "Condition", cid)
    assert body["meta"]["versionId"] == "2"
    assert Counter(labels(body)).most_common(1)[0][1] == 1
    assert act(body) == PART2 and conf(body) == ["R"]
    # an update without meta keeps them, and a V set earlier is not downgraded
    r = client.put(f"/fhir/Condition/{cid}", headers=FJ, json={
        **condition(*F10), "id": cid,
        "meta": {"security": [{"system": CONFIDENTIALITY, "code": "V"}]}})
    assert r.status_code == 200, r.text
    r = client.put(f"/fhir/Condition/{cid}", json={**condition(*F10), "id": cid}, headers=FJ)
    assert r.status_code == 200, r.text
    body = read(client, "Condition", cid)
    assert act(body) == PART2 and conf(body) == ["V"]
    assert len(labels(body)) == 6


def test_transaction_entry_is_labelled(client, alex):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b5c6f0e-3a53-4f7e-9f43-3d7cf8a0b001",
         "resource": condition(*F10), "request": {"method": "POST", "url": "Condition"}},
        {"fullUrl": "urn:uuid:0b5c6f0e-3a53-4f7e-9f43-3d7cf8a0b002",
         "resource": {"resourceType": "MedicationRequest", "status": "active",
                      "intent": "order", "subject": {"reference": alex},
                      "medicationCodeableConcept": {
                          "coding": [{"system": RXNORM, "code": "0",
                                      "display": "Buprenorphine 8 MG / Naloxone 2 MG "
                                                 "Sublingual Film"}]}},
         "request": {"method": "POST", "url": "MedicationRequest"}},
        {"fullUrl": "urn:uuid:0b5c6f0e-3a53-4f7e-9f43-3d7cf8a0b003",
         "resource": condition(*F33), "request": {"method": "POST", "url": "Condition"}},
    ]}
    r = client.post("/fhir", json=bundle, headers=FJ)
    assert r.status_code == 200, r.text
    refs = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]]
    sud, med, mh = (read(client, *ref.split("/")[-2:]) for ref in refs)
    assert act(sud) == PART2 and conf(sud) == ["R"]
    assert act(med) == PART2 and conf(med) == ["R"]
    assert act(mh) == {"PSY", "BH"}


def test_patch_that_adds_a_sud_code_labels(client, alex):
    cid = create(client, {**condition("I10", "Essential hypertension")})["id"]
    assert labels(read(client, "Condition", cid)) == []
    ops = [{"op": "replace", "path": "/code/coding/0",
            "value": {"system": ICD, "code": "F11.20", "display": "Opioid dependence"}}]
    r = client.patch(f"/fhir/Condition/{cid}", json=ops,
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    body = read(client, "Condition", cid)
    assert act(body) == PART2 and conf(body) == ["R"]
    # a patch that tries to remove the labels does not
    r = client.patch(f"/fhir/Condition/{cid}", json=[{"op": "remove", "path": "/meta/security"}],
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    body = read(client, "Condition", cid)
    assert act(body) == PART2 and conf(body) == ["R"]


def test_security_search_finds_labelled(client, alex):
    sud = create(client, condition(*F10))["id"]
    mh = create(client, condition(*F33))["id"]
    plain = create(client, condition("I10", "Essential hypertension"))["id"]

    def ids(query):
        r = client.get(f"/fhir/Condition?{query}")
        assert r.status_code == 200, r.text
        return {e["resource"]["id"] for e in r.json().get("entry", [])}

    assert ids(f"_security={ACT_CODE}|SUD") == {sud}
    assert ids(f"_security={ACT_CODE}|42CFRPart2") == {sud}
    assert ids(f"_security={ACT_CODE}|PSY") == {mh}
    assert ids(f"_security={CONFIDENTIALITY}|R") == {sud, mh}
    assert plain not in ids(f"_security={CONFIDENTIALITY}|R")


def test_unrelated_observation_gets_nothing(client, alex):
    bp = {"resourceType": "Observation", "status": "final", "subject": {"reference": alex},
          "category": [{"coding": [{
              "system": "http://terminology.hl7.org/CodeSystem/observation-category",
              "code": "vital-signs"}]}],
          "code": {"coding": [{"system": LOINC, "code": "85354-9",
                               "display": "Blood pressure panel"}], "text": "Blood pressure"},
          "effectiveDateTime": "2026-02-01",
          "component": [
              {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
               "valueQuantity": {"value": 120, "unit": "mmHg"}},
              {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
               "valueQuantity": {"value": 80, "unit": "mmHg"}}]}
    body = read(client, "Observation", create(client, bp)["id"])
    assert "security" not in body["meta"]
    # an Observation whose value is a SUD SNOMED code is labelled
    obs = {**bp, "code": {"text": "Problem"}, "component": [],
           "valueCodeableConcept": {"coding": [{"system": SCT, "code": "75544000"}]}}
    del obs["component"]
    assert act(read(client, "Observation", create(client, obs)["id"])) == PART2


def test_other_types_and_reasons(client, alex):
    enc = {"resourceType": "Encounter", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                     "code": "VR"},
           "subject": {"reference": alex},
           "reasonCode": [{"coding": [{"system": ICD, "code": "F10.20"}]}]}
    assert act(read(client, "Encounter", create(client, enc)["id"])) == PART2
    # a Patient is not labelled by the rule, whatever it says
    assert "security" not in read(client, "Patient", "alex")["meta"]


# ---------------------------------------------------------------- without HTTP

def test_value_sets_expand_as_documented():
    rule = SecurityLabels()
    vs = load_value_sets([default_profiles_dir()])
    sud, mh = CodeMatcher(vs[SUD_VALUE_SET]), CodeMatcher(vs[MENTAL_HEALTH_VALUE_SET])

    def icd(code):
        return {"coding": [{"system": ICD, "code": code}]}

    for code in ("F10.20", "F11.20", "F12.90", "F13.10", "F14.20", "F15.20", "F16.10",
                 "F18.20", "F19.20", "F10", "F19.921"):
        assert sud.concept(icd(code)) and not mh.concept(icd(code)), code
    for code in ("F17.210", "F17", "F09", "F03.90", "F1", "F100.2", "I10", "Z79.891"):
        assert not sud.concept(icd(code)), code
    for code in ("F20.9", "F32.A", "F33.1", "F41.1", "F43.10", "F90.0", "F99"):
        assert mh.concept(icd(code)) and not sud.concept(icd(code)), code
    for code in ("F10.20", "F17.210", "F03.90", "I10"):
        assert not mh.concept(icd(code)), code
    # the same code in another system is not a match
    assert not sud.concept({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                        "code": "F10.2"}]})
    # medications by ingredient, in RxNorm displays and in text; not naloxone alone
    assert sud.concept({"text": "methadone 10 mg/mL oral concentrate"})
    assert sud.concept({"coding": [{"system": RXNORM, "display": "Naltrexone 50 MG Oral "
                                                                 "Tablet"}]})
    assert not sud.concept({"text": "naloxone 4 mg nasal spray"})
    assert not sud.concept({"text": "sertraline 100 mg"})
    assert not sud.concept({"coding": [{"system": LOINC, "display": "Methadone [Mass/volume]"
                                                                    " in Urine"}]})
    assert rule.labels_for("Condition", {"code": icd("F33.1")}) == (["PSY", "BH"], "R")


def test_merge_keeps_one_confidentiality_highest():
    n = {"system": CONFIDENTIALITY, "code": "N"}
    v = {"system": CONFIDENTIALITY, "code": "V"}
    out = merge([n, v, n], [], ["SUD"], "R")
    assert [(x["system"], x["code"]) for x in out] == [(CONFIDENTIALITY, "V"), (ACT_CODE, "SUD")]
    assert merge([], [], [], None) == []
    assert [x["code"] for x in merge([], [n], [], "R")] == ["R"]


def test_bad_value_sets_are_refused(tmp_path):
    vs = {"resourceType": "ValueSet", "url": SUD_VALUE_SET, "compose": {"include": [
        {"system": ICD, "filter": [{"property": "concept", "op": "is-a", "value": "F10"}]}]}}
    (tmp_path / "ValueSet-x.json").write_text(json.dumps(vs))
    with pytest.raises(ValueSetError):
        SecurityLabels(str(tmp_path))
    with pytest.raises(ValueSetError):
        SecurityLabels(str(tmp_path / "missing"))
