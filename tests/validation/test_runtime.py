"""Definitions added at runtime are usable at once; unknown profiles are warnings."""
from __future__ import annotations

import copy
import threading

import pytest

from fhirgw.validation import DefinitionError, ProfileValidator

from .conftest import errors

URL = "http://partner.example.org/fhir/StructureDefinition/partner-patient"
VS_URL = "http://partner.example.org/fhir/ValueSet/partner-languages"


def _partner_profile() -> dict:
    return {
        "resourceType": "StructureDefinition", "url": URL, "name": "PartnerPatient",
        "status": "active", "fhirVersion": "4.0.1", "kind": "resource", "abstract": False,
        "type": "Patient", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Patient", "path": "Patient"},
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1,
             "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"}},
            {"id": "Patient.identifier:partnerId", "path": "Patient.identifier",
             "sliceName": "partnerId", "min": 1, "max": "1"},
            {"id": "Patient.identifier:partnerId.system", "path": "Patient.identifier.system",
             "min": 1, "fixedUri": "http://partner.example.org/id"},
            {"id": "Patient.communication", "path": "Patient.communication", "min": 1},
            {"id": "Patient.communication.language", "path": "Patient.communication.language",
             "binding": {"strength": "required", "valueSet": VS_URL}},
        ]},
    }


def _languages() -> dict:
    return {"resourceType": "ValueSet", "url": VS_URL, "status": "active",
            "compose": {"include": [{"system": "urn:ietf:bcp:47",
                                     "concept": [{"code": "en"}, {"code": "es"}]}]}}


def _patient(lang: str = "es") -> dict:
    return {"resourceType": "Patient", "meta": {"profile": [URL]},
            "identifier": [{"system": "http://other.example.org/mrn", "value": "1"},
                           {"system": "http://partner.example.org/id", "value": "P-9"}],
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47",
                                                        "code": lang}]}}]}


@pytest.fixture
def fresh() -> ProfileValidator:
    return ProfileValidator()


def test_unknown_profile_is_a_warning(fresh):
    issues = fresh.validate(_patient())
    assert [(i.severity, i.code, i.expression) for i in issues] == \
        [("warning", "not-found", ["Patient"])]
    assert not fresh.knows(URL)


def test_added_profile_and_value_set_apply_at_once(fresh):
    fresh.add(_partner_profile())
    assert fresh.knows(URL)
    # the ValueSet is not there yet: the binding cannot be checked, which is not an error
    issues = fresh.validate(_patient("fr"))
    assert not errors(issues)
    assert any(i.severity == "information" and "communication[0].language" in i.expression[0]
               for i in issues)
    fresh.add(_languages())
    assert errors(fresh.validate(_patient("es"))) == []
    bad = errors(fresh.validate(_patient("fr")))
    assert [(i.expression, i.code) for i in bad] == \
        [(["Patient.communication[0].language"], "code-invalid")]


def test_added_profile_slices_by_value(fresh):
    fresh.add(_partner_profile())
    fresh.add(_languages())
    p = _patient()
    del p["identifier"][1]
    assert [(i.expression, i.code) for i in errors(fresh.validate(p))] == \
        [(["Patient.identifier"], "required")]
    p = _patient()
    p["identifier"].append(copy.deepcopy(p["identifier"][1]))
    assert [(i.expression, i.code) for i in errors(fresh.validate(p))] == \
        [(["Patient.identifier"], "structure")]


def test_replacing_and_removing_a_profile(fresh):
    fresh.add(_partner_profile())
    fresh.add(_languages())
    p = _patient()
    del p["communication"]
    assert errors(fresh.validate(p))
    relaxed = _partner_profile()
    relaxed["differential"]["element"] = relaxed["differential"]["element"][:4]
    fresh.add(relaxed)
    assert errors(fresh.validate(p)) == []
    fresh.remove(URL)
    assert not fresh.knows(URL)
    assert [i.severity for i in fresh.validate(p)] == ["warning"]


def test_broken_profile_is_rejected_on_add(fresh):
    broken = _partner_profile()
    broken["differential"]["element"].append({"id": "Patient.nonsense", "path": "Patient.nonsense",
                                              "min": 1})
    with pytest.raises(DefinitionError):
        fresh.add(broken)
    assert not fresh.knows(URL)
    with pytest.raises(DefinitionError):
        fresh.add({"resourceType": "Patient"})


def test_added_code_system_backs_whole_system_include(fresh):
    fresh.add(_partner_profile())
    vs = _languages()
    vs["compose"]["include"] = [{"system": "http://partner.example.org/cs/lang"}]
    fresh.add(vs)
    p = _patient()
    p["communication"][0]["language"]["coding"][0] = {"system": "http://partner.example.org/cs/lang",
                                                     "code": "xx"}
    # the system is not loaded: any code of it is accepted
    assert errors(fresh.validate(p)) == []
    fresh.add({"resourceType": "CodeSystem", "url": "http://partner.example.org/cs/lang",
               "status": "active", "content": "complete",
               "concept": [{"code": "en"}, {"code": "es"}]})
    assert [i.expression for i in errors(fresh.validate(p))] == \
        [["Patient.communication[0].language"]]


def test_concurrent_add_and_validate(fresh):
    """Validations running while definitions change never crash or see half a state."""
    patient = _patient()
    failures: list[BaseException] = []
    stop = threading.Event()

    def validate_loop():
        try:
            while not stop.is_set():
                issues = fresh.validate(patient)
                assert {i.severity for i in issues} <= {"warning", "information", "error"}
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=validate_loop) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(20):
        fresh.add(_languages())
        fresh.add(_partner_profile())
        if n % 2:
            fresh.remove(URL)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    fresh.add(_partner_profile())
    assert errors(fresh.validate(patient)) == []
