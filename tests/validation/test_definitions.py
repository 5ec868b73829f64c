"""Loading definitions, snapshot generation, and the codes our ValueSets use."""
from __future__ import annotations

import json

import pytest

from fhirgw.validation import ProfileValidator, default_profiles_dir
from fhirgw.validation.definitions import Definitions, core
from fhirgw.validation.snapshot import SnapshotError, generate, split_id

from .conftest import PROFILES, TERMINOLOGY, load_json, need_packages


def _resolver():
    return lambda url: (core().get("StructureDefinition", url) or {}).get("snapshot",
                                                                         {}).get("element")


def test_default_profiles_dir_is_the_repository_folder(monkeypatch):
    monkeypatch.delenv("FHIRGW_PROFILES", raising=False)
    assert default_profiles_dir() == str(PROFILES)
    monkeypatch.setenv("FHIRGW_PROFILES", "/elsewhere")
    assert default_profiles_dir() == "/elsewhere"


def test_split_id():
    assert split_id("Patient.identifier:mrn.system") == ("Patient.identifier:mrn", "system")
    assert split_id("Observation.value[x]") == ("Observation", "value[x]")
    assert split_id("Patient") == ("", "Patient")


def test_snapshot_unrolls_types_slices_and_choices():
    sd = {"url": "http://x/sd", "type": "Observation", "derivation": "constraint",
          "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
          "differential": {"element": [
              {"id": "Observation.code.coding", "path": "Observation.code.coding",
               "slicing": {"discriminator": [{"type": "value", "path": "system"}]}},
              {"id": "Observation.code.coding:loinc", "path": "Observation.code.coding",
               "sliceName": "loinc", "min": 1},
              {"id": "Observation.code.coding:loinc.system", "path": "Observation.code.coding.system",
               "fixedUri": "http://loinc.org"},
              {"path": "Observation.valueQuantity", "min": 1}]}}
    els = generate(sd, _resolver())
    ids = [e["id"] for e in els]
    # CodeableConcept was unrolled below Observation.code, Coding below the slice only
    assert "Observation.code.coding" in ids and "Observation.code.text" in ids
    assert "Observation.code.coding:loinc.code" in ids
    assert "Observation.code.coding.system" not in ids  # the validator walks Coding itself
    i = ids.index("Observation.code.coding:loinc")
    assert els[i]["sliceName"] == "loinc" and els[i]["min"] == 1
    assert ids.index("Observation.code.coding:loinc.system") > i
    assert els[ids.index("Observation.code.coding:loinc.system")]["fixedUri"] == "http://loinc.org"
    value = els[ids.index("Observation.value[x]")]
    assert value["min"] == 1 and [t["code"] for t in value["type"]] == ["Quantity"]
    # the base definition was not modified
    base = core().get("StructureDefinition", "http://hl7.org/fhir/StructureDefinition/Observation")
    assert next(e for e in base["snapshot"]["element"] if e["id"] == "Observation.value[x]")["min"] == 0


def test_snapshot_rejects_unknown_elements_and_bases():
    bad = {"url": "http://x/bad", "type": "Patient", "derivation": "constraint",
           "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
           "differential": {"element": [{"id": "Patient.colour", "path": "Patient.colour"}]}}
    with pytest.raises(SnapshotError):
        generate(bad, _resolver())
    bad["baseDefinition"] = "http://nowhere/sd"
    with pytest.raises(SnapshotError):
        generate(bad, _resolver())


def test_load_file_bundle_and_folder(tmp_path):
    vs = {"resourceType": "ValueSet", "url": "http://x/vs/one", "status": "active"}
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": dict(vs, url="http://x/vs/two")},
                        {"resource": {"resourceType": "Patient"}}]}
    (tmp_path / "sub").mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "one.json").write_text(json.dumps(vs))
    (tmp_path / "sub" / "bundle.json").write_text(json.dumps(bundle))
    (tmp_path / "examples" / "skip.json").write_text(json.dumps(dict(vs, url="http://x/vs/3")))
    d = Definitions()
    assert d.load(str(tmp_path)) == 2
    assert sorted(d.urls("ValueSet")) == ["http://x/vs/one", "http://x/vs/two"]
    v = ProfileValidator(tmp_path / "one.json")
    assert v.expand("http://x/vs/one").problem  # known but empty compose: said so


def test_npm_package_loads_lazily():
    need_packages()
    d = Definitions()
    n = d.load(str(TERMINOLOGY.parent))
    assert n > 1000
    cs = d.get("CodeSystem", "http://terminology.hl7.org/CodeSystem/v3-ActCode")
    assert cs["resourceType"] == "CodeSystem" and cs["content"] == "complete"


def _codes(cs: dict) -> set[str]:
    out: set[str] = set()

    def walk(concepts):
        for c in concepts:
            out.add(c["code"])
            walk(c.get("concept", []))
    walk(cs.get("concept", []))
    return out


def test_hl7_codes_in_our_value_sets_exist():
    """Every v3/HL7 code our ValueSets and profiles name is defined in the HL7 terminology."""
    need_packages()
    terms = Definitions()
    terms.load(str(TERMINOLOGY.parent))
    checked = 0
    pairs: list[tuple[str, str, str]] = []
    for path in sorted(PROFILES.glob("ValueSet-*.json")):
        for inc in load_json(path)["compose"]["include"]:
            for c in inc.get("concept", []):
                pairs.append((path.name, inc["system"], c["code"]))
    for path in sorted(PROFILES.glob("StructureDefinition-*.json")):
        for el in load_json(path)["differential"]["element"]:
            for key, value in el.items():
                if key == "patternCodeableConcept":
                    pairs += [(path.name, c["system"], c["code"]) for c in value["coding"]]
    for where, system, code in pairs:
        cs = terms.get("CodeSystem", system) or core().get("CodeSystem", system)
        if cs is None or cs.get("content") != "complete":
            continue  # LOINC, CPT, HCPCS, US Core: not distributed here
        assert code in _codes(cs), f"{where}: {system}#{code} is not defined"
        checked += 1
    assert checked >= 15


def test_our_code_systems_match_our_value_sets(iop):
    for path in sorted(PROFILES.glob("CodeSystem-*.json")):
        cs = load_json(path)
        exp = iop.expand(cs["valueSet"])
        assert exp.complete and {c for _, c in exp.codes} == _codes(cs), path.name
