"""A profile set none of us wrote: the International Patient Summary (hl7.fhir.uv.ips@2.0.0)."""
from __future__ import annotations

import copy

import pytest

from .conftest import IPS, errors, load_json, need_packages

IPS_SD = "http://hl7.org/fhir/uv/ips/StructureDefinition/"
#: examples without meta.profile, by the profile they illustrate
DEFAULT_PROFILE = {
    "Patient": "Patient-uv-ips", "Condition": "Condition-uv-ips",
    "AllergyIntolerance": "AllergyIntolerance-uv-ips", "Composition": "Composition-uv-ips",
    "Bundle": "Bundle-uv-ips", "Medication": "Medication-uv-ips",
    "MedicationStatement": "MedicationStatement-uv-ips",
    "MedicationRequest": "MedicationRequest-uv-ips", "Organization": "Organization-uv-ips",
    "Practitioner": "Practitioner-uv-ips", "PractitionerRole": "PractitionerRole-uv-ips",
    "Procedure": "Procedure-uv-ips", "Immunization": "Immunization-uv-ips",
    "Device": "Device-uv-ips", "DeviceUseStatement": "DeviceUseStatement-uv-ips",
    "Specimen": "Specimen-uv-ips", "Flag": "Flag-alert-uv-ips",
    "DiagnosticReport": "DiagnosticReport-uv-ips", "ImagingStudy": "ImagingStudy-uv-ips",
}


def _examples():
    folder = IPS / "example"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _profiles_for(resource: dict) -> list[str]:
    claimed = (resource.get("meta") or {}).get("profile")
    if claimed:
        return claimed
    return [IPS_SD + DEFAULT_PROFILE[resource["resourceType"]]]


def _ips_example(name: str) -> dict:
    need_packages()
    return load_json(IPS / "example" / f"{name}.json")


def test_ips_package_is_complete(ips):
    urls = [u for u in ips.profiles() if u.startswith(IPS_SD)]
    assert len(urls) >= 30
    for name in ("Patient-uv-ips", "Composition-uv-ips", "Condition-uv-ips",
                 "MedicationStatement-uv-ips", "Bundle-uv-ips"):
        assert ips.knows(IPS_SD + name)


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.stem)
def test_ips_example_is_valid(path, ips):
    resource = load_json(path)
    found = errors(ips.validate(resource, _profiles_for(resource)))
    assert found == [], "; ".join(f"{i.expression} {i.diagnostics}" for i in found)


def _mutations():
    return [
        ("Patient-66033", "Patient-uv-ips", lambda r: r.pop("name"), "Patient.name", "required"),
        ("Patient-66033", "Patient-uv-ips", lambda r: r.pop("birthDate"), "Patient.birthDate",
         "required"),
        ("Patient-66033", "Patient-uv-ips", lambda r: r.__setitem__("gender", "f"),
         "Patient.gender", "code-invalid"),
        ("Condition-eumfh-39-07-1", "Condition-uv-ips", lambda r: r.pop("code"), "Condition.code",
         "required"),
        ("Condition-eumfh-39-07-1", "Condition-uv-ips",
         lambda r: r["clinicalStatus"]["coding"][0].__setitem__("code", "cured"),
         "Condition.clinicalStatus", "code-invalid"),
        ("Condition-eumfh-39-07-1", "Condition-uv-ips",
         lambda r: r.__setitem__("subject", {"reference": "Group/g1"}), "Condition.subject",
         "structure"),
        ("MedicationStatement-eumfh-39-07-1", "MedicationStatement-uv-ips",
         lambda r: r.pop("subject"), "MedicationStatement.subject", "required"),
        ("AllergyIntolerance-eumfh-39-07-1", "AllergyIntolerance-uv-ips",
         lambda r: r.pop("code"), "AllergyIntolerance.code", "required"),
        ("Composition-composition-minimal", "Composition-uv-ips",
         lambda r: r["type"]["coding"][0].__setitem__("code", "11488-4"), "Composition.type",
         "value"),
        ("Bundle-bundle-minimal", "Bundle-uv-ips", lambda r: r.pop("identifier"),
         "Bundle.identifier", "required"),
        ("Bundle-bundle-minimal", "Bundle-uv-ips", lambda r: r.__setitem__("type", "collection"),
         "Bundle.type", "value"),
        ("Bundle-bundle-minimal", "Bundle-uv-ips",
         lambda r: r["entry"][1]["resource"].pop("birthDate"),
         "Bundle.entry[1].resource.birthDate", "required"),
        ("Bundle-bundle-minimal", "Bundle-uv-ips", lambda r: r["entry"].pop(0), "Bundle.entry",
         "required"),
        ("Observation-tobacco-use-example", "Observation-tobaccouse-uv-ips",
         lambda r: r["code"]["coding"][0].__setitem__("code", "8480-6"), "Observation.code",
         "value"),
    ]


@pytest.mark.parametrize("name,profile,mutate,expression,code", _mutations(),
                         ids=[f"{m[0]}:{m[3]}" for m in _mutations()])
def test_ips_mutation_fails(name, profile, mutate, expression, code, ips):
    resource = _ips_example(name)
    before = errors(ips.validate(resource, [IPS_SD + profile]))
    mutated = copy.deepcopy(resource)
    mutate(mutated)
    found = errors(ips.validate(mutated, [IPS_SD + profile]))
    new = [i for i in found if i not in before]
    assert any(expression in i.expression and i.code == code for i in new), \
        "; ".join(f"{i.expression} {i.code} {i.diagnostics}" for i in found)


def test_ips_invariant_is_evaluated(ips):
    """ips-comp-1-style profile invariants come from the IPS snapshot, not from us."""
    bundle = _ips_example("Bundle-bundle-minimal")
    comp = bundle["entry"][0]["resource"]
    # a section with neither text, entries nor sub-sections breaks cmp-2 / the IPS rules
    comp["section"][0].pop("entry", None)
    comp["section"][0].pop("text", None)
    comp["section"][0].pop("emptyReason", None)
    found = errors(ips.validate(bundle, [IPS_SD + "Bundle-uv-ips"]))
    assert any(i.code == "invariant" and i.expression[0].startswith("Bundle.entry[0].resource")
               for i in found), [i.diagnostics for i in found]
