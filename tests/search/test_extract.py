"""Index extraction: compiled expressions, row shapes, speed."""
import glob
import os
import time

import orjson
import pytest

from fhirgw.model.resources import SUPPORTED, validate
from fhirgw.search import SearchEngine, SearchRegistry
from fhirgw.search.fhirpath import compile_expression
from fhirgw.search.values import date_range, normalize_string, number_range

from .helpers import EXAMPLES_PKG as PKG



@pytest.fixture(scope="module")
def search():
    return SearchEngine(base_urls=["http://fhir.test/r4"])


def test_every_official_expression_compiles_without_fhirpathpy():
    reg = SearchRegistry()
    fallbacks = []
    for sp in reg:
        if not sp.expression:
            continue
        for base in sp.base:
            if base in SUPPORTED:
                if compile_expression(sp.expression, base).fallback is not None \
                        and "exists()" not in sp.expression:
                    fallbacks.append((base, sp.code))
    assert fallbacks == []


def test_params_for_includes_resource_level():
    reg = SearchRegistry()
    ps = reg.params_for("Patient")
    for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text",
                 "name", "identifier", "birthdate"):
        assert code in ps
    assert "_text" not in reg.params_for("Binary")   # DomainResource only
    assert "patient" in reg.params_for("Observation")
    assert reg.params_for("Observation")["patient"].type == "reference"


def test_rows_shape(search):
    rows = search.index_rows("Observation", {
        "resourceType": "Observation", "id": "x", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
        "subject": {"reference": "http://fhir.test/r4/Patient/p1/_history/3"},
        "effectivePeriod": {"start": "2026-01-01"},
        "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                          "code": "mm[Hg]"}})
    assert set(rows) == {"token", "string", "date", "number", "quantity", "reference", "uri", "composite"}
    ref = [r for r in rows["reference"] if r["param"] == "subject"]
    assert ref == [{"res_type": "Observation", "param": "subject", "target_type": "Patient",
                    "target_id": "p1", "url": None}]
    # patient is subject.where(resolve() is Patient): found from subject's rows, none its own
    assert not [r for r in rows["reference"] if r["param"] == "patient"]
    date = [r for r in rows["date"] if r["param"] == "date"][0]
    assert date["low"] == date_range("2026-01-01")[0] and date["high"] > 2 ** 61   # open end
    q = [r for r in rows["quantity"] if r["param"] == "value-quantity"][0]
    assert (q["value"], q["system"], q["code"], q["unit"]) == (120.0, "http://unitsofmeasure.org", "mm[Hg]", "mmHg")
    keys = {r["key"] for r in rows["composite"] if r["param"] == "code-value-quantity"}
    assert "http://loinc.org|8480-6$" in keys and "8480-6$http://unitsofmeasure.org|mm[Hg]" in keys
    for table_rows in rows.values():
        for r in table_rows:
            assert "id" not in r and "rid" not in r


def test_value_helpers():
    assert normalize_string("  Ödön   ÉVA ") == "odon eva"
    assert normalize_string("Straße") == "strasse"
    lo, hi = date_range("2026-01")
    assert hi - lo + 1 == 31 * 86400 * 10 ** 6
    assert date_range("2026-01-01T00:00:00+01:00")[0] == date_range("2025-12-31T23:00:00Z")[0]
    assert date_range("2026-01-01T10:00:00.5Z")[1] - date_range("2026-01-01T10:00:00.5Z")[0] == 99999
    assert number_range("100") == (100.0, 99.5, 100.5)
    assert number_range("100.00") == (100.0, 99.995, 100.005)
    assert number_range("1e2") == (100.0, 95.0, 105.0)


def test_every_official_example_indexes():
    files = sorted(glob.glob(os.path.join(PKG, "*.json")))
    if not files:
        pytest.skip("official examples package not fetched")
    search = SearchEngine()
    n = 0
    for f in files:
        try:
            res = orjson.loads(open(f, "rb").read())
        except orjson.JSONDecodeError:
            continue
        if isinstance(res, dict) and res.get("resourceType") in SUPPORTED:
            search.index_rows(res["resourceType"], res)
            n += 1
    assert n > 3000


def test_extraction_is_cheaper_than_validation(search):
    path = os.path.join(PKG, "Patient-example.json")
    if os.path.exists(path):
        patient = orjson.loads(open(path, "rb").read())
    else:
        patient = {"resourceType": "Patient", "id": "x", "name": [{"family": "A", "given": ["B"]}],
                   "birthDate": "1970-01-01", "gender": "male",
                   "identifier": [{"system": "urn:x", "value": "1"}]}
    validate(patient)
    search.index_rows("Patient", patient)
    n = 300

    def best(fn):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_index = best(lambda: search.index_rows("Patient", patient))
    t_validate = best(lambda: validate(patient))
    assert t_index < t_validate, (t_index, t_validate)
