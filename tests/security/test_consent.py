"""Evaluating 42 CFR Part 2 Consents (fhirgw.security.consent), without a database."""
from __future__ import annotations

import copy
from datetime import datetime, timezone

import pytest

from fhirgw.security.consent import (Consents, Request, bounds, decide, evaluate,
                                     needs_consent, patient_of, period_covers)

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
PARTNER = "Organization/partner-psychiatry"


def sec(*codes, conf="R"):
    return [{"system": CONF, "code": conf}] + [{"system": ACT, "code": c} for c in codes]


#: an opioid-use-disorder Condition as the write rule labels it
SUD = {"resourceType": "Condition", "id": "oud", "subject": {"reference": "Patient/alex"},
       "meta": {"security": sec("SUD", "ETH", "NODSCLCD", "NORDSCLCD", "42CFRPart2")},
       "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20"}]}}
#: recurrent depression: PSY/BH, restricted, but no Part 2
PSY = {"resourceType": "Condition", "id": "mdd", "subject": {"reference": "Patient/alex"},
       "meta": {"security": sec("PSY", "BH")},
       "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F33.1"}]}}


def consent(provision: dict | None = None, status: str = "active", **extra) -> dict:
    """The IOP Part 2 consent example: permit Riverside Psychiatry, treatment, SUD and R,
    for 2026-02-20 .. 2027-02-20."""
    body = {
        "resourceType": "Consent", "id": "c1", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/alex"},
        "dateTime": "2026-02-20T11:00:00-08:00",
        "policyRule": {"coding": [{"system": ACT, "code": "42CFRPart2"}]},
        "provision": provision if provision is not None else {
            "type": "permit",
            "period": {"start": "2026-02-20", "end": "2027-02-20"},
            "actor": [{"role": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP"}]}, "reference": {"reference": PARTNER}}],
            "purpose": [{"system": REASON, "code": "TREAT"}],
            "securityLabel": [{"system": ACT, "code": "SUD"}, {"system": CONF, "code": "R"}],
        },
        **extra}
    return body


def permitted(consents, resource=SUD, recipient=PARTNER, purpose="TREAT", now=NOW) -> bool:
    return decide(consents, Request(recipient, purpose, resource, now))


def actor(ref):
    return {"role": {"coding": [{"system":
                                 "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP"}]},
            "reference": {"reference": ref}}


# ---------------------------------------------------------------- what needs consent

def test_what_needs_consent():
    assert needs_consent(SUD)
    assert not needs_consent(PSY)            # mental health alone: no Part 2 consent
    assert not needs_consent({"resourceType": "Patient", "id": "alex"})
    for code in ("42CFRPart2", "SUD", "ETH", "NODSCLCD"):
        assert needs_consent({"meta": {"security": [{"system": ACT, "code": code}]}})
    # the code matters with its system
    assert not needs_consent({"meta": {"security": [{"system": "urn:other", "code": "SUD"}]}})
    assert patient_of(SUD) == "Patient/alex"
    assert patient_of({"resourceType": "Encounter",
                       "subject": {"reference": "http://us/fhir/Patient/p9"}}) == "Patient/p9"
    assert patient_of({"resourceType": "Patient", "id": "alex"}) == "Patient/alex"


# ---------------------------------------------------------------- the cases

def test_no_consent_withholds():
    assert not permitted([])


def test_permit_to_that_org():
    assert evaluate(consent(), Request(PARTNER, "TREAT", SUD, NOW)) == "permit"
    assert permitted([consent()])
    # the actor may be an absolute URL ending in the Organization
    c = consent()
    c["provision"]["actor"] = [actor("https://iop.example/fhir/Organization/partner-psychiatry")]
    assert permitted([c])


def test_permit_to_another_org():
    assert not permitted([consent()], recipient="Organization/other-clinic")
    # not by a suffix of the id either
    assert not permitted([consent()], recipient="Organization/psychiatry")


def test_expired_or_not_yet_started():
    assert not permitted([consent()], now=datetime(2027, 2, 21, tzinfo=timezone.utc))
    assert not permitted([consent()], now=datetime(2026, 2, 19, 23, tzinfo=timezone.utc))
    # a date end covers its whole day
    assert permitted([consent()], now=datetime(2027, 2, 20, 23, 59, tzinfo=timezone.utc))


def test_wrong_purpose():
    assert not permitted([consent()], purpose="HPAYMT")
    assert not permitted([consent()], purpose="ETREAT")   # exact codes only


def test_label_restricted_consent_permits_psy_only():
    c = consent()
    c["provision"]["securityLabel"] = [{"system": ACT, "code": "PSY"}]
    assert not permitted([c])
    # also when the record carries PSY next to its Part 2 labels
    dual = copy.deepcopy(SUD)
    dual["meta"]["security"] += [{"system": ACT, "code": "PSY"}, {"system": ACT, "code": "BH"}]
    assert not permitted([c], resource=dual)
    # a consent for SUD does cover it
    c["provision"]["securityLabel"] = [{"system": ACT, "code": "ETH"}]
    assert permitted([c], resource=dual)
    # confidentiality is a ceiling: consent up to N does not cover R data
    c["provision"]["securityLabel"] = [{"system": ACT, "code": "SUD"},
                                       {"system": CONF, "code": "N"}]
    assert not permitted([c])


def test_deny_root_with_nested_permit():
    c = consent({"type": "deny",
                 "provision": [{"type": "permit", "actor": [actor(PARTNER)],
                                "purpose": [{"system": REASON, "code": "TREAT"}],
                                "period": {"start": "2026-01-01", "end": "2026-12-31"}}]})
    assert permitted([c])
    assert evaluate(c, Request("Organization/other", "TREAT", SUD, NOW)) == "deny"
    assert not permitted([c], recipient="Organization/other")
    assert not permitted([c], now=datetime(2027, 1, 2, tzinfo=timezone.utc))


def test_permit_root_with_nested_deny_for_the_recipient():
    c = consent({"type": "permit", "actor": [actor(PARTNER), actor("Organization/pcp")],
                 "purpose": [{"system": REASON, "code": "TREAT"}],
                 "provision": [{"type": "deny", "actor": [actor(PARTNER)]}]})
    assert evaluate(c, Request(PARTNER, "TREAT", SUD, NOW)) == "deny"
    assert not permitted([c])
    assert permitted([c], recipient="Organization/pcp")


def test_nested_deny_wins_over_nested_permit():
    c = consent({"type": "permit", "actor": [actor(PARTNER)],
                 "provision": [{"type": "permit", "class": [{"code": "Condition"}]},
                               {"type": "deny", "securityLabel": [{"system": ACT,
                                                                   "code": "ETH"}]}]})
    assert not permitted([c])
    # a nested deny that does not apply leaves the permit
    c["provision"]["provision"][1]["securityLabel"] = [{"system": ACT, "code": "HIV"}]
    assert permitted([c])


def test_class_constraint():
    c = consent()
    c["provision"]["class"] = [{"system": "http://hl7.org/fhir/resource-types",
                                "code": "MedicationRequest"}]
    assert not permitted([c])
    c["provision"]["class"].append({"system": "http://hl7.org/fhir/resource-types",
                                    "code": "Condition"})
    assert permitted([c])


def test_inactive_or_revoked_consents_say_nothing():
    for status in ("inactive", "rejected", "draft", "proposed", "entered-in-error"):
        assert evaluate(consent(status=status), Request(PARTNER, "TREAT", SUD, NOW)) is None
        assert not permitted([consent(status=status)])
    # another scope (research, treatment) is no privacy consent
    c = consent()
    c["scope"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "research"}]}
    assert not permitted([c])


def test_a_deny_in_one_consent_beats_a_permit_in_another():
    deny = consent({"type": "deny", "actor": [actor(PARTNER)]}, id="c2")
    assert not permitted([consent(), deny])


def test_a_permit_must_name_the_recipient():
    c = consent({"type": "permit", "purpose": [{"system": REASON, "code": "TREAT"}]})
    assert not permitted([c])
    # an actor that is not a recipient (e.g. the disclosing program) does not count
    c["provision"]["actor"] = [{"role": {"coding": [{"code": "CST"}]},
                                "reference": {"reference": PARTNER}}]
    assert not permitted([c])


def test_unreadable_or_uncheckable_constraints():
    c = consent()
    c["provision"]["period"] = {"start": "next spring"}
    assert not permitted([c])
    c = consent()
    c["provision"]["dataPeriod"] = {"start": "2026-01-01"}
    assert not permitted([c])
    # ... while a deny with them applies
    deny = consent({"type": "deny", "dataPeriod": {"start": "2026-01-01"}}, id="c2")
    assert evaluate(deny, Request(PARTNER, "TREAT", SUD, NOW)) == "deny"


def test_periods():
    assert [d.isoformat() for d in bounds("2026")] == ["2026-01-01T00:00:00+00:00",
                                                       "2027-01-01T00:00:00+00:00"]
    low, high = bounds("2026-02-20T11:00:00-08:00")
    assert low == datetime(2026, 2, 20, 19, tzinfo=timezone.utc)
    assert period_covers({"start": "2026-05"}, NOW) and not period_covers({"end": "2026-05"}, NOW)
    with pytest.raises(ValueError):
        bounds("2026-13")


class _FakeTx:
    """Just what Consents needs: search Consent by patient and status, counted."""

    def __init__(self, consents):
        self.consents = consents
        self.searches = 0

    def search(self, res_type, items, limit=1000):
        assert res_type == "Consent"
        self.searches += 1
        patient = dict(items)["patient"]

        class S:
            def __init__(self, body):
                self.body = body

            def resource(self):
                return self.body
        return [S(c) for c in self.consents if c["patient"]["reference"] == patient]


def test_consents_are_read_once_per_patient():
    tx = _FakeTx([consent()])
    cs = Consents(tx)
    assert cs.permits(SUD, PARTNER, "TREAT", now=NOW)
    assert cs.permits({**SUD, "id": "other"}, PARTNER, "TREAT", now=NOW)
    assert not cs.permits({**SUD, "subject": {"reference": "Patient/sam"}}, PARTNER, "TREAT",
                          now=NOW)
    assert tx.searches == 2
