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
