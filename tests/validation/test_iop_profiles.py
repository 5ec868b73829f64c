"""The IOP profiles: each valid example passes; each invalid variant fails where expected."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fhirgw.model.resources import validate as base_validate

from .conftest import EXAMPLES, PROFILES, errors, load_json

SD = "http://fhirgw.dev/fhir/StructureDefinition/"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
PROFILE_FILES = sorted(PROFILES.glob("StructureDefinition-*.json"))


def test_every_resource_profile_has_an_example():
    profiles = {load_json(p)["url"] for p in PROFILE_FILES
                if load_json(p)["kind"] == "resource"}
    claimed = {u for f in EXAMPLE_FILES for u in load_json(f)["meta"]["profile"]}
    assert profiles == claimed
    assert len(profiles) == 11


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profiles_are_differentials_on_r4(path: Path, iop):
    sd = load_json(path)
    assert sd["url"] == SD + path.stem.split("-", 1)[1]
    assert sd["derivation"] == "constraint" and sd["fhirVersion"] == "4.0.1"
    assert "snapshot" not in sd and sd["differential"]["element"]
    assert iop.compile(sd["url"]).type == sd["type"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_valid_example_passes(path: Path, iop):
    resource = load_json(path)
    before = copy.deepcopy(resource)
    base_validate(resource)  # also valid FHIR R4 for the model layer
    issues = iop.validate(resource)
    assert [i for i in issues if i.severity in ("error", "warning")] == []
    assert resource == before, "validation must not modify the resource"


def _drop(path: str):
    def mutate(r):
        *parents, last = path.split(".")
        for p in parents:
            r = r[int(p)] if p.isdigit() else r[p]
        del r[int(last) if last.isdigit() else last]
    return mutate


def _set(path: str, value):
    def mutate(r):
        *parents, last = path.split(".")
        for p in parents:
            r = r[int(p)] if p.isdigit() else r[p]
        r[int(last) if last.isdigit() else last] = copy.deepcopy(value)
    return mutate


def _both(*fns):
    def mutate(r):
        for fn in fns:
            fn(r)
    return mutate


# (example, what is wrong, mutation, expected expression, expected issue code)
INVALID = [
    ("Patient-iop-client", "no birth date", _drop("birthDate"), "Patient.birthDate", "required"),
    ("Patient-iop-client", "no identifier", _drop("identifier"), "Patient.identifier", "required"),
    ("Patient-iop-client", "identifier without system", _drop("identifier.0.system"),
     "Patient.identifier[0].system", "required"),
    ("Patient-iop-client", "name without family", _drop("name.0.family"), "Patient.name[0].family",
     "required"),
    ("Patient-iop-client", "no phone or email", _set("telecom", [{"system": "fax", "value": "1"}]),
     "Patient", "invariant"),
    ("Patient-iop-client", "gender outside the required ValueSet", _set("gender", "woman"),
     "Patient.gender", "code-invalid"),
    ("EpisodeOfCare-iop-episode", "finished without discharge date", _drop("period.end"),
     "EpisodeOfCare", "invariant"),
    ("EpisodeOfCare-iop-episode", "discharge before admission", _set("period.end", "2025-12-01"),
     "EpisodeOfCare", "invariant"),
    ("EpisodeOfCare-iop-episode", "no care manager", _drop("careManager"),
     "EpisodeOfCare.careManager", "required"),
    ("EpisodeOfCare-iop-episode", "care manager is an Organization",
     _set("careManager", {"reference": "Organization/x"}), "EpisodeOfCare.careManager", "structure"),
    ("EpisodeOfCare-iop-episode", "unknown program type",
     _set("type.0.coding.0.code", "day-program"), "EpisodeOfCare.type[0]", "code-invalid"),
    ("EpisodeOfCare-iop-episode", "two program types",
     lambda r: r["type"].append(copy.deepcopy(r["type"][0])), "EpisodeOfCare.type", "structure"),
    ("CarePlan-iop-treatment-plan", "no assess-plan category", _drop("category.0"),
     "CarePlan.category", "required"),
    ("CarePlan-iop-treatment-plan", "intent is not plan", _set("intent", "proposal"),
     "CarePlan.intent", "value"),
    ("CarePlan-iop-treatment-plan", "activity without schedule",
     _drop("activity.2.detail.scheduledTiming"), "CarePlan.activity[2].detail.scheduled",
     "required"),
    ("CarePlan-iop-treatment-plan", "schedule as text instead of Timing",
     _both(_drop("activity.0.detail.scheduledTiming"),
           _set("activity.0.detail.scheduledString", "weekly")),
     "CarePlan.activity[0].detail.scheduledString", "structure"),
    ("CarePlan-iop-treatment-plan", "activity code not a session type",
     _set("activity.0.detail.code", {"coding": [{"system": "http://www.ama-assn.org/go/cpt",
                                                  "code": "90837"}]}),
     "CarePlan.activity[0].detail.code", "code-invalid"),
    ("CarePlan-iop-treatment-plan", "subject is a Group", _set("subject", {"reference": "Group/g"}),
     "CarePlan.subject", "structure"),
    ("CarePlan-iop-treatment-plan", "no goal", _drop("goal"), "CarePlan.goal", "required"),
    ("CarePlan-iop-treatment-plan", "no period start", _drop("period.start"),
     "CarePlan.period.start", "required"),
    ("CarePlan-iop-relapse-prevention-plan", "no crisis resource", _drop("activity.3"),
     "CarePlan.activity", "required"),
    ("CarePlan-iop-relapse-prevention-plan", "trigger without description",
     _drop("activity.0.detail.description"), "CarePlan.activity[0].detail.description",
     "required"),
    ("CarePlan-iop-relapse-prevention-plan", "support contact without way to reach",
     _both(_drop("activity.4.detail.performer"), _drop("activity.4.detail.description"),
           lambda r: r["activity"].append(copy.deepcopy(r["activity"][0]))),
     "CarePlan.activity[4].detail.description", "required"),
    ("Goal-iop-goal", "target without measure", _drop("target.0.measure"),
     "Goal.target[0].measure", "required"),
    ("Goal-iop-goal", "target without detail", _drop("target.0.detailQuantity"),
     "Goal.target[0].detail", "required"),
    ("Goal-iop-goal", "completed without achievement", _both(_set("lifecycleStatus", "completed"),
                                                             _drop("achievementStatus")),
     "Goal", "invariant"),
    ("Appointment-iop-session", "not marked telehealth", _drop("extension"),
     "Appointment.extension", "required"),
    ("Appointment-iop-session", "telehealth modality is ambulatory",
     _set("extension.0.valueCoding.code", "AMB"), "Appointment.extension[0].valueCoding",
     "code-invalid"),
    ("Appointment-iop-session", "telehealth value of the wrong type",
     _both(_drop("extension.0.valueCoding"), _set("extension.0.valueString", "video")),
     "Appointment.extension[0].valueString", "structure"),
    ("Appointment-iop-session", "group session with one client",
     lambda r: r.__setitem__("participant", [r["participant"][0], r["participant"][3]]),
     "Appointment", "invariant"),
    ("Appointment-iop-session", "individual session with three clients",
     _set("serviceType.0.coding.0.code", "individual"), "Appointment", "invariant"),
    ("Appointment-iop-session", "no clinician", _drop("participant.3"), "Appointment", "invariant"),
    ("Appointment-iop-session", "an Organization as participant",
     _set("participant.3.actor", {"reference": "Organization/o"}),
     "Appointment.participant[3].actor", "structure"),
    ("Appointment-iop-session", "unknown session type", _set("serviceType.0.coding.0.code", "retreat"),
     "Appointment.serviceType[0]", "code-invalid"),
    ("ServiceRequest-iop-referral", "intent is plan", _set("intent", "plan"),
     "ServiceRequest.intent", "value"),
    ("ServiceRequest-iop-referral", "no requester", _drop("requester"), "ServiceRequest.requester",
     "required"),
    ("ServiceRequest-iop-referral", "no authoredOn", _drop("authoredOn"),
     "ServiceRequest.authoredOn", "required"),
    ("Task-iop-referral-task", "rejected without reason", _set("status", "rejected"),
     "Task", "invariant"),
    ("Task-iop-referral-task", "accepted without owner", _drop("owner"), "Task", "invariant"),
    ("Task-iop-referral-task", "code is not fulfill", _set("code.coding.0.code", "approve"),
     "Task.code", "value"),
    ("Task-iop-referral-task", "intent is plan", _set("intent", "plan"), "Task.intent", "value"),
    ("Task-iop-referral-task", "focus is not a ServiceRequest",
     _set("focus", {"reference": "CarePlan/c"}), "Task.focus", "structure"),
    ("Task-iop-referral-task", "no focus", _drop("focus"), "Task.focus", "required"),
    ("Task-iop-referral-task", "no patient", _drop("for"), "Task.for", "required"),
    ("Task-iop-referral-task", "unknown status", _set("status", "done"), "Task.status",
     "code-invalid"),
    ("Task-iop-referral-task", "modified before authored", _set("lastModified", "2026-01-01"),
     "Task", "invariant"),
    ("Composition-iop-discharge-summary", "not a discharge summary",
     _set("type.coding.0.code", "11506-3"), "Composition.type", "value"),
    ("Composition-iop-discharge-summary", "no discharge medications section", _drop("section.2"),
     "Composition.section", "required"),
    ("Composition-iop-discharge-summary", "section without title", _drop("section.4.title"),
     "Composition.section[4].title", "required"),
    ("Composition-iop-discharge-summary", "relapse-prevention plan missing",
     _set("section.3.entry", [{"reference": "Appointment/follow-up-1"}]), "Composition",
     "invariant"),
    ("Composition-iop-discharge-summary", "preliminary", _set("status", "preliminary"),
     "Composition", "invariant"),
    ("Bundle-iop-medication-handoff", "not a message", _set("type", "collection"), "Bundle.type",
     "value"),
    ("Bundle-iop-medication-handoff", "MessageHeader not first",
     lambda r: r["entry"].reverse(), "Bundle", "invariant"),
    ("Bundle-iop-medication-handoff", "no medication", _drop("entry.2"), "Bundle.entry", "required"),
    ("Bundle-iop-medication-handoff", "client without birth date",
     _drop("entry.1.resource.birthDate"), "Bundle.entry[1].resource.birthDate", "required"),
    ("Bundle-iop-medication-handoff", "wrong event", _set("entry.0.resource.eventCoding.code", "x"),
     "Bundle", "invariant"),
    ("Bundle-iop-medication-handoff", "no timestamp", _drop("timestamp"), "Bundle.timestamp",
     "required"),
    ("Consent-iop-part2-consent", "not a patient consent",
     _set("category.0.coding.0.code", "64292-6"), "Consent.category", "required"),
    ("Consent-iop-part2-consent", "deny provision", _set("provision.type", "deny"),
     "Consent.provision.type", "value"),
    ("Consent-iop-part2-consent", "purpose not permitted",
     _set("provision.purpose.0.code", "COVERAGE"), "Consent.provision.purpose[0]", "code-invalid"),
    ("Consent-iop-part2-consent", "no security label", _drop("provision.securityLabel"),
     "Consent.provision.securityLabel", "required"),
    ("Consent-iop-part2-consent", "not under 42 CFR Part 2",
     _set("policyRule.coding.0.code", "HIPAAAuth"), "Consent.policyRule", "value"),
    ("Consent-iop-part2-consent", "period ends before it starts",
     _set("provision.period.end", "2025-01-01"), "Consent", "invariant"),
    ("Consent-iop-part2-consent", "scope is treatment",
     _set("scope.coding.0.code", "treatment"), "Consent.scope", "value"),
]


@pytest.mark.parametrize("name,why,mutate,expression,code", INVALID,
                         ids=[f"{n.split('-', 1)[0]}:{w}" for n, w, *_ in INVALID])
def test_invalid_variant_fails(name, why, mutate, expression, code, iop, example):
    resource = example(name)
    mutate(resource)
    found = errors(iop.validate(resource))
    assert found, f"{why}: expected an error at {expression}"
    hits = [i for i in found if expression in i.expression and i.code == code]
    assert hits, f"{why}: no {code} error at {expression}; got " + \
        "; ".join(f"{i.expression} {i.code} {i.diagnostics}" for i in found)
    assert all(i.diagnostics for i in hits)


def test_issue_codes_and_severities_are_fhir_codes(iop, example):
    r = example("Task-iop-referral-task")
    r["status"] = "rejected"
    r["focus"] = {"reference": "Patient/p"}
    issues = iop.validate(r)
    assert {i.severity for i in issues} <= {"error", "warning", "information"}
    for i in issues:
        out = i.to_json()
        assert out["expression"] and out["diagnostics"].startswith(out["expression"][0])


def test_must_support_reported_as_information(iop, example):
    r = example("Patient-iop-client")
    del r["address"]
    issues = iop.validate(r)
    info = [i for i in issues if i.severity == "information"]
    assert [i.expression for i in info] == [["Patient.address"]]
    assert not errors(issues)


def test_extensible_binding_is_a_warning(iop, example):
    r = example("ServiceRequest-iop-referral")
    r["code"] = {"coding": [{"system": "http://snomed.info/sct", "code": "306206005"}]}
    issues = iop.validate(r)
    assert not errors(issues)
    warn = [i for i in issues if i.severity == "warning"]
    assert [(i.expression, i.code) for i in warn] == [(["ServiceRequest.code"], "code-invalid")]


def test_explicit_profile_overrides_meta(iop, example):
    r = example("Patient-iop-client")
    del r["meta"]
    assert iop.validate(r) == []
    del r["birthDate"]
    assert [i.expression for i in errors(iop.validate(r, [SD + "iop-client"]))] == \
        [["Patient.birthDate"]]


def test_profile_for_another_type_is_an_error(iop, example):
    r = example("Patient-iop-client")
    found = errors(iop.validate(r, [SD + "iop-goal"]))
    assert len(found) == 1 and "Goal" in found[0].diagnostics
