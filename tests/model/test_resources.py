import pytest

from fhirgw.model import resources as r
from fhirgw.model.errors import BadRequest, InvalidResource, NotFound


@pytest.mark.parametrize("text", [b'{"v":72.50}', b'{"v":1.0}', b'{"v":1e3}', b'{"v":0.1000}',
                                  b'{"v":12345678901234567890}', b'{"v":3.14159265358979323846}'])
def test_numbers_keep_their_text(text):
    assert r.dumps(r.loads(text)) == text


def test_plain_numbers_take_the_fast_path():
    assert type(r.loads(b'{"v":72.5}')["v"]) is float


def test_raw_decimal_is_a_float():
    v = r.loads(b'{"v":72.50}')["v"]
    assert v == 72.5 and isinstance(v, float)


def _lossy_by_definition(body: bytes) -> bool:
    """has_lossy_numbers as its definition reads: every number token after ``:``, ``[`` or
    ``,``, tested one by one."""
    import re
    for m in re.finditer(rb"[:\[,]\s*-?(\d[\d.eE+\-]*)(?=\s*[,\]}])", body):
        tok = m.group(1)
        if b"e" in tok or b"E" in tok or (b"." in tok and tok.endswith(b"0")):
            return True
        if sum(48 <= c <= 57 for c in tok) >= 16:
            return True
    return False


@pytest.mark.parametrize("body", [
    b'{"v":72.50}', b'{"v":72.5}', b'{"a":[1,2.0]}', b'[1e3]', b'{"v": -1.5E+2 }',
    b'{"t":"17:00:00","u":"urn:uuid:1e5f0000-0000-0000-0000-000000000000"}',
    b'{"v":"x:1.50,"}', b'{"v":1234567890123456}', b'{"v":123456789012345}',
    b'{"v":12345678.12345678}', b'{"a":1,"b":[10,20],"c":{"d":30}}', b'{"v":1:2}',
    b'{"v":\n  2.50\n}', b'[\t1.0\t,2]', b'{"v":1.5,"w":2.50}'])
def test_lossy_numbers_as_defined(body):
    assert r.has_lossy_numbers(body) == _lossy_by_definition(body)


def test_lossy_numbers_as_defined_on_random_text():
    """The search through one separator finds what the definition finds, on random text
    made of what numbers and their surroundings are made of."""
    import random
    rng = random.Random(20261129)
    alphabet = b'0123456789.eE+-:,[]{}" \n\tax'
    for _ in range(20_000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert r.has_lossy_numbers(body) == _lossy_by_definition(body), body


def test_bad_json_is_bad_request():
    with pytest.raises(BadRequest):
        r.loads(b"{nope")


def test_r4_types_without_r4b_model_are_unsupported():
    assert "MedicinalProduct" in r.R4_TYPES and "MedicinalProduct" not in r.SUPPORTED
    with pytest.raises(NotFound, match="does not support"):
        r.check_type("MedicinalProduct")
    assert "Citation" not in r.SUPPORTED  # R4B-only, not R4


def test_r4_medication_statement_is_r4_not_r5():
    ms = {"resourceType": "MedicationStatement", "status": "active",
          "medicationCodeableConcept": {"text": "sertraline 50 mg"},
          "subject": {"reference": "Patient/1"}}
    assert r.validate(ms) is ms


def test_validation_issue_paths():
    with pytest.raises(InvalidResource) as e:
        r.validate({"resourceType": "Patient", "name": [{"given": ["a", 3]}]})
    assert e.value.issues[0].expression == ["Patient.name[0].given[1]"]


_PRELOAD_PROBE = """
import json, sys
from fhirgw.model import resources as res
if sys.argv[1] == "preload":
    visited = res.preload(["Patient", "Observation"])
    assert visited > 20, visited
before = {m for m in sys.modules if m.startswith("fhir")}
res.validate({"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Ana"]}],
              "identifier": [{"system": "urn:iop:mrn", "value": "1", "type": {"coding": [
                  {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
              "telecom": [{"system": "phone", "value": "555"}],
              "address": [{"city": "Springfield", "period": {"start": "2020-01-01"}}],
              "contact": [{"name": {"family": "Rivera"}}]}, "Patient")
res.validate({"resourceType": "Observation", "status": "final", "code": {"text": "PHQ-9"},
              "subject": {"reference": "Patient/1"}, "valueQuantity": {"value": 12}},
             "Observation")
print(json.dumps(sorted({m for m in sys.modules if m.startswith("fhir")} - before)))
"""


@pytest.mark.parametrize("mode", ["preload", "lazy"])
def test_preload_imports_what_validation_would_import_later(mode):
    """``resources.preload``: the model classes that a resource's fields reach are imported
    up front (the validation worker and ``serve`` call it at start), so validating a
    resource with nested elements imports nothing more; without it, it does."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PRELOAD_PROBE, mode], capture_output=True,
                         text=True, check=True).stdout
    imported = json.loads(out.strip().splitlines()[-1])
    if mode == "preload":
        assert imported == []
    else:
        assert any("humanname" in m for m in imported), imported
